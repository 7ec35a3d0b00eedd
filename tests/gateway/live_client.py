"""A graphql-transport-ws client for the tests: what a browser's graphql-ws client sends."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

PROTOCOL = "graphql-transport-ws"
CREDITS = "subscription ($e: String, $u: ID) { creditsChanged(email: $e, userId: $u) "
CREDITS += "{ available held nextExpiry asOf } }"
ENTITLEMENTS = "subscription ($e: String, $u: ID) { entitlementChanged(email: $e, userId: $u) "
ENTITLEMENTS += "{ feature hasAccess limit source } }"


async def open_socket(base: str) -> ClientConnection:
    return await connect(base.replace("http://", "ws://") + "/graphql", subprotocols=[PROTOCOL])


async def connected(base: str, credential: str | None) -> ClientConnection:
    """A socket past connection_init with `Bearer credential`, acknowledged."""
    socket = await open_socket(base)
    payload = {} if credential is None else {"authorization": f"Bearer {credential}"}
    await send(socket, {"type": "connection_init", "payload": payload})
    ack = await receive(socket)
    assert ack["type"] == "connection_ack", ack
    return socket


async def send(socket: ClientConnection, message: dict[str, Any]) -> None:
    await socket.send(json.dumps(message))


async def receive(socket: ClientConnection, within: float = 5.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(socket.recv(), within))


async def subscribe(socket: ClientConnection, op_id: str, query: str, **variables: Any) -> None:
    payload = {"query": query, "variables": variables}
    await send(socket, {"id": op_id, "type": "subscribe", "payload": payload})


async def next_data(socket: ClientConnection, op_id: str, within: float = 5.0) -> dict[str, Any]:
    message = await receive(socket, within)
    assert message.get("id") == op_id and message["type"] == "next", message
    assert "errors" not in message["payload"], message
    return message["payload"]["data"]


async def error_codes(socket: ClientConnection, op_id: str) -> list[str]:
    """The codes of the `error` message that refused subscription `op_id`."""
    message = await receive(socket)
    assert message.get("id") == op_id and message["type"] == "error", message
    return [e.get("extensions", {}).get("code") for e in message["payload"]]


async def close_code(socket: ClientConnection, within: float = 5.0) -> int | None:
    """The code the server closed with (waits for the close)."""
    try:
        while True:
            await asyncio.wait_for(socket.recv(), within)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


async def nothing_within(socket: ClientConnection, seconds: float) -> bool:
    try:
        message = await asyncio.wait_for(socket.recv(), seconds)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected message: {message}")

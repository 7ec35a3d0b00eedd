"""ASGI middleware: X-Request-ID on every request and response, the request log, body limits."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.logs import actor_var, log_fields, request_id_var
from gateway.prometheus import count_request, observe_request, start_counting_statements

log = logging.getLogger("gateway.access")

# A client's id is kept when it is short and made of safe characters; anything else could be
# a log-injection or a header-splitting attempt, and is replaced.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
MAX_BODY_BYTES = 1_000_000


def new_request_id() -> str:
    return uuid.uuid4().hex


def pick_request_id(client_value: str | None) -> str:
    if client_value and _SANE_REQUEST_ID.match(client_value):
        return client_value
    return new_request_id()


class RequestContextMiddleware:
    """Sets the request id (header in, header out, log context) and logs one line per request.

    The outermost layer (gateway.app.Gateway puts it outside Starlette's error middleware), so
    every answer carries the id, and an exception is logged here once with it. An exception
    that escapes after a complete answer is not passed on: uvicorn would close the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                client_id = value.decode("latin-1")
                break
        request_id = pick_request_id(client_id)
        scope.setdefault("state", {})["request_id"] = request_id
        rid_token = request_id_var.set(request_id)
        actor_token = actor_var.set(None)
        started = time.perf_counter()
        statements = start_counting_statements()
        status = 500
        answered = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                answered = True
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if not answered:
                raise
        finally:
            # The GraphQL route names the operation it ran (gateway.graphql.route).
            operation = scope["state"].get("graphql_operation", "none")
            record_request(
                scope["method"], scope["path"], status, started, statements[0], operation
            )
            request_id_var.reset(rid_token)
            actor_var.reset(actor_token)


def record_request(
    method: str, path: str, status: int, started: float, statements: int, operation: str
) -> None:
    """The request's Prometheus figures and its access log line (in the request's context)."""
    seconds = time.perf_counter() - started
    count_request(path, status)
    observe_request(path, operation, seconds, statements)
    if log.isEnabledFor(logging.INFO):  # the line's fields are not even gathered otherwise
        log_fields(
            log,
            logging.INFO,
            event="request",
            method=method,
            path=path,
            status=status,
            duration_ms=round(seconds * 1000, 2),
            request_id=request_id_var.get(),
            actor=actor_var.get(),
        )


class BodyLimitMiddleware:
    """Refuses request bodies over the limit with 413, whether announced or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = scope.get("state", {}).get("request_id", "")
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await send_too_large(send, self.max_bytes, request_id)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:
            await send_too_large(send, self.max_bytes, request_id)


class BodyTooLarge(Exception):
    pass


async def send_too_large(
    send: Send, limit: int, request_id: str, *, request_id_header: bool = False
) -> None:
    """The 413 answer; with the request id among its headers where no outer layer adds it."""
    body = json.dumps(
        {
            "error": f"request body over {limit} bytes",
            "code": "BODY_TOO_LARGE",
            "requestId": request_id,
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if request_id_header:
        headers.append((b"x-request-id", request_id.encode("latin-1")))
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})

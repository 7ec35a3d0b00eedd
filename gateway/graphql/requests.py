"""GraphQL requests as HTTP carries them: GET parameters or a JSON body, checked at the door."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.datastructures import Address, State
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope

from gateway.graphql.persisted import PersistedQueryError, persisted_hash
from gateway.middleware import BodyTooLarge


@dataclass(frozen=True)
class GraphQLRequest:
    query: str | None
    variables: dict[str, Any] | None
    operation_name: str | None
    document_id: str | None
    # extensions.persistedQuery.sha256Hash (Apollo's automatic persisted queries), checked.
    persisted_hash: str | None = None


class PostRequest:
    """POST /graphql as the lane (gateway.graphql.lane) hands it to the route.

    What the route reads of a starlette Request, and no more: the method, the headers (a dict,
    the first of repeated ones, as Starlette's `get` gives), the state, the client (already
    the forwarded one when uvicorn trusts the proxy), and the body, read straight from
    `receive` within the body limit.
    """

    __slots__ = ("_body", "_limit", "_receive", "_scope", "headers", "state")
    method = "POST"

    def __init__(self, scope: Scope, receive: Receive, headers: dict[str, str], limit: int) -> None:
        self._scope = scope
        self._receive = receive
        self._limit = limit
        self._body: bytes | None = None
        self.headers = headers
        self.state = State(scope["state"])

    @property
    def client(self) -> Address | None:
        client = self._scope.get("client")
        return Address(*client) if client else None

    async def body(self) -> bytes:
        if self._body is None:
            chunks: list[bytes] = []
            received = 0
            more = True
            while more:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect
                if message["type"] != "http.request":
                    continue
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                received += len(chunk)
                if received > self._limit:
                    raise BodyTooLarge
                chunks.append(chunk)
            self._body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self._body


# The two kinds of request the route answers: POST by the lane, the rest through Starlette.
HTTPRequest = Request | PostRequest


class RequestError(Exception):
    """The HTTP request itself is unusable (4xx before any GraphQL runs)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_request(request: HTTPRequest) -> GraphQLRequest:
    if request.method == "GET":
        params = request.query_params
        raw_variables = params.get("variables")
        return GraphQLRequest(
            query=params.get("query"),
            variables=_variables(raw_variables),
            operation_name=params.get("operationName"),
            document_id=params.get("id"),
            persisted_hash=_persisted_hash(_json_object(params.get("extensions"), "extensions")),
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/json", "application/graphql-response+json"):
        raise RequestError(415, "Send application/json")
    try:
        data = parse_json(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise RequestError(400, "The body is not valid JSON") from None
    if not isinstance(data, dict):
        raise RequestError(400, "The body must be one JSON object (batching is off)")
    query, name, doc_id = data.get("query"), data.get("operationName"), data.get("id")
    for field, value in (("query", query), ("operationName", name), ("id", doc_id)):
        if value is not None and not isinstance(value, str):
            raise RequestError(400, f"{field} must be a string")
    extensions = data.get("extensions")
    if extensions is not None and not isinstance(extensions, dict):
        raise RequestError(400, "extensions must be a JSON object")
    return GraphQLRequest(
        query=query,
        variables=_variables(data.get("variables")),
        operation_name=name,
        document_id=doc_id,
        persisted_hash=_persisted_hash(extensions),
    )


def parse_json(body: bytes) -> Any:
    """`json.loads(body)`, the same value or the same error, mostly by the faster orjson."""
    if _LONG_DIGITS.search(body) is None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    # Bodies orjson refuses (NaN, a BOM, UTF-16) or reads otherwise (it makes a float of an
    # integer past 64 bits) are the json module's: each keeps the answer it always had.
    return json.loads(body)


# Where an integer may be past 64 bits (below -2**63 or above 2**64 - 1): 19 digits after a
# minus, or 20 in a row. A run of digits in a string matches too, and only costs the json module.
_LONG_DIGITS = re.compile(rb"-[0-9]{19}|[0-9]{20}")


def _variables(raw: Any) -> dict[str, Any] | None:
    return _json_object(raw, "variables")


def _json_object(raw: Any, name: str) -> dict[str, Any] | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            raise RequestError(400, f"{name} is not valid JSON") from None
    if not isinstance(raw, dict):
        raise RequestError(400, f"{name} must be a JSON object")
    return raw


def _persisted_hash(extensions: dict[str, Any] | None) -> str | None:
    try:
        return persisted_hash(extensions)
    except PersistedQueryError as error:
        raise RequestError(400, str(error)) from None


def wants_html(request: Request) -> bool:
    params = request.query_params
    if "query" in params or "id" in params or "extensions" in params:
        return False
    return "text/html" in request.headers.get("accept", "")

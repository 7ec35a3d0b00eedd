"""GraphQL requests as HTTP carries them: GET parameters or a JSON body, checked at the door."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from gateway.graphql.persisted import PersistedQueryError, persisted_hash


@dataclass(frozen=True)
class GraphQLRequest:
    query: str | None
    variables: dict[str, Any] | None
    operation_name: str | None
    document_id: str | None
    # extensions.persistedQuery.sha256Hash (Apollo's automatic persisted queries), checked.
    persisted_hash: str | None = None


class RequestError(Exception):
    """The HTTP request itself is unusable (4xx before any GraphQL runs)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_request(request: Request) -> GraphQLRequest:
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
        data = json.loads(await request.body())
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

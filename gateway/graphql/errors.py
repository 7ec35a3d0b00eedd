"""GraphQL error bodies: codes, request ids, masking of the unexpected, no hints for outsiders."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from graphql import GraphQLError
from starlette.responses import Response

from gateway import media_types
from gateway.db import DatabaseUnavailable
from schema.context import AuthError, BadUserInput

log = logging.getLogger("gateway.graphql")

MASKED_MESSAGE = "Unexpected error."
UNAVAILABLE_MESSAGE = "The database cannot be reached; nothing was changed. Retry shortly."

_SUGGESTION = re.compile(r"\s*Did you mean .*$", re.DOTALL)


def error_body(message: str, code: str, request_id: str) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code, "requestId": request_id}}


def graphql_error(
    error: GraphQLError, request_id: str, *, suggestions: bool = True, code: str | None = None
) -> dict[str, Any]:
    """The error as the client sees it: ours keep their code; anything unexpected is masked.

    Without `suggestions`, graphql-core's "Did you mean …?" hints are cut from its messages:
    they would hand out the schema that introspection withholds.
    """
    original = error.original_error
    if original is None:
        code = code or ("GRAPHQL_VALIDATION_FAILED" if error.nodes else "GRAPHQL_PARSE_FAILED")
        body = error.formatted
        body["extensions"] = {**(body.get("extensions") or {}), "code": code}
    elif isinstance(original, DatabaseUnavailable):
        body = {
            "message": UNAVAILABLE_MESSAGE,
            "path": error.path,
            "extensions": {"code": "DATABASE_UNAVAILABLE"},
        }
    elif isinstance(original, AuthError):
        body = {"message": str(original), "path": error.path, "extensions": {"code": original.code}}
    elif isinstance(original, BadUserInput):
        body = {
            "message": str(original),
            "path": error.path,
            "extensions": {"code": "BAD_USER_INPUT"},
        }
    elif isinstance(original, GraphQLError):
        # graphql-core's own coercion errors (bad variable values) are safe to show.
        body = error.formatted
        body["extensions"] = {"code": "BAD_USER_INPUT"}
    else:
        log.error("unhandled error in %s", error.path, exc_info=original)
        body = {
            "message": MASKED_MESSAGE,
            "path": error.path,
            "extensions": {"code": "INTERNAL_SERVER_ERROR"},
        }
    if not suggestions and isinstance(body.get("message"), str):
        body["message"] = _SUGGESTION.sub("", body["message"]).rstrip()
    body["extensions"]["requestId"] = request_id
    if body.get("path") is None:
        body.pop("path", None)
    return body


def json_response(
    body: dict[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return media_types.GraphQLResponse(body, status, headers)

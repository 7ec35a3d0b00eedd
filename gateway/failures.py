"""Failure answers outside a route's own: JSON with a code and the request id, 503 in outages.

Registered as the app's exception handlers, so that nothing a route raises reaches the client
as Starlette's plain-text page or makes uvicorn drop the connection.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.db import DatabaseUnavailable
from gateway.graphql.errors import MASKED_MESSAGE, UNAVAILABLE_MESSAGE, error_body
from gateway.logs import log_fields

log = logging.getLogger("gateway.failures")

# Long enough for a database restart or a fail-over, short enough that clients do not give up.
RETRY_AFTER_SECONDS = 5


def failure(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """One failure, shaped as the path's clients read it: GraphQL errors on /graphql."""
    request_id = getattr(request.state, "request_id", "")
    body: dict[str, Any]
    if request.url.path == "/graphql":
        body = {"errors": [error_body(message, code, request_id)]}
    else:
        body = {"error": message, "code": code, "requestId": request_id}
    return JSONResponse(body, status, headers=dict(headers) if headers else None)


def unavailable_headers() -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_SECONDS)}


async def database_unavailable(request: Request, exc: Exception) -> Response:
    log_fields(
        log, logging.WARNING, event="database_unavailable", path=request.url.path, error=str(exc)
    )
    return failure(request, 503, "DATABASE_UNAVAILABLE", UNAVAILABLE_MESSAGE, unavailable_headers())


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    try:
        code = HTTPStatus(exc.status_code).name
    except ValueError:
        code = "HTTP_ERROR"
    return failure(request, exc.status_code, code, exc.detail, exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    # Logged with its traceback by gateway.middleware, which sees every escaping exception.
    return failure(request, 500, "INTERNAL_SERVER_ERROR", MASKED_MESSAGE)


EXCEPTION_HANDLERS = {
    DatabaseUnavailable: database_unavailable,
    HTTPException: http_error,
    Exception: server_error,
}

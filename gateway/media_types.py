"""GraphQL over HTTP media types: which one a client accepts, and the status each answer gets.

Under `application/graphql-response+json` the status tells what happened (the spec's 4xx for a
request that never reached execution); under `application/json`, the legacy type, every GraphQL
answer is 200 so that older clients keep reading the body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse, Response

from gateway.responses import SafeJSONResponse

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
APPLICATION_JSON = "application/json"
# What each acceptable media range is answered with; a wildcard gets the legacy type, which
# every client understands.
_ANSWERS = {
    GRAPHQL_RESPONSE_JSON: GRAPHQL_RESPONSE_JSON,
    APPLICATION_JSON: APPLICATION_JSON,
    "application/*": APPLICATION_JSON,
    "*/*": APPLICATION_JSON,
}
MAX_ACCEPT_ENTRIES = 20
_STATUS_BY_CODE = {"UNAUTHENTICATED": 401, "FORBIDDEN": 403}


def negotiate(accept: str | None) -> str | None:
    """The media type to answer in; None when the client accepts neither (406).

    No Accept header means application/json. Of the acceptable ranges the highest quality wins;
    on a tie application/graphql-response+json does, as the spec recommends.
    """
    if accept is None or not accept.strip():
        return APPLICATION_JSON
    best: str | None = None
    best_quality = 0.0
    for part in accept.split(",")[:MAX_ACCEPT_ENTRIES]:
        media_range, _, params = part.partition(";")
        answer = _ANSWERS.get(media_range.strip().lower())
        if answer is None:
            continue
        quality = _quality(params)
        if quality <= 0:
            continue
        if quality > best_quality or (quality == best_quality and answer == GRAPHQL_RESPONSE_JSON):
            best, best_quality = answer, quality
    return best


def _quality(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value)
            except ValueError:
                return 0.0
            # `0 <= q <= 1` also rejects NaN.
            return quality if 0 <= quality <= 1 else 0.0
    return 1.0


class GraphQLResponse(SafeJSONResponse):
    """A GraphQL answer that knows the status it gets under application/graphql-response+json."""

    def __init__(
        self, body: dict[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(body, status, headers=dict(headers) if headers else None)
        self.strict_status = _strict_status(body, status)

    def answer_as(self, media_type: str) -> Response:
        if media_type == GRAPHQL_RESPONSE_JSON:
            self.status_code = self.strict_status
            self.headers["content-type"] = GRAPHQL_RESPONSE_JSON
        return self


def _strict_status(body: Mapping[str, Any], status: int) -> int:
    """4xx for a request that did not execute: no `data`, or `data: null` from errors that
    concern the request as a whole (bad variables, refused roles) rather than a field."""
    if status != 200 or body.get("data") is not None:
        return status
    errors = body.get("errors") or []
    if "data" in body and any(error.get("path") for error in errors):
        return status
    code = errors[0].get("extensions", {}).get("code") if errors else None
    return _STATUS_BY_CODE.get(code, 400)


def not_acceptable(request_id: str) -> Response:
    message = f"Accept {GRAPHQL_RESPONSE_JSON} or {APPLICATION_JSON}"
    body = {"errors": [{"message": message, "extensions": {"code": "NOT_ACCEPTABLE"}}]}
    body["errors"][0]["extensions"]["requestId"] = request_id
    return JSONResponse(body, 406)

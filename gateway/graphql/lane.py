"""The fast lane: POST /graphql as one plain ASGI callable, past every middleware layer.

Every page view is a POST /graphql. Profiled under the viewer read, the layers around the
route (trace context, request context, body limit, Starlette's routing and request, each with
its own closures and message copies) took more of the process than the route itself. The lane
does what those layers did, for this one route, in one call: the request id (in and out), the
trace context (gateway.tracing, when it is not exported: exporting, the OpenTelemetry
middleware stays outside the lane), the access log line and the request metrics
(gateway.middleware.record_request), the body limit (413), the same failure answers
(gateway.failures), and an unexpected exception answered 500 and logged once with the request
id. Anything else (GET, other paths, a browser's cross-origin request when CORS is configured)
takes the full stack, `app`.
"""

from __future__ import annotations

import logging
import time

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.db import DatabaseUnavailable
from gateway.failures import database_unavailable, http_error, server_error
from gateway.graphql.requests import PostRequest
from gateway.graphql.route import GraphQLRoute
from gateway.logs import actor_var, enter_request_trace, leave_request_trace, request_id_var
from gateway.middleware import (
    MAX_BODY_BYTES,
    BodyTooLarge,
    pick_request_id,
    record_request,
    send_too_large,
)
from gateway.prometheus import start_counting_statements

PATH = "/graphql"
log = logging.getLogger("gateway.access")


class GraphQLLane:
    """Answers POST /graphql itself; sends everything else to `app` (the full stack)."""

    def __init__(
        self,
        app: ASGIApp,
        route: GraphQLRoute,
        *,
        cors: bool,
        trace: bool,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.route = route
        # With CORS configured, a request carrying an Origin needs CORSMiddleware's headers.
        self.cors = cors
        # Whether the lane enters the trace context itself (not when OpenTelemetry's
        # middleware, outside it, does).
        self.trace = trace
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == PATH
            and scope["method"] == "POST"
            and not (self.cors and _has_origin(scope))
        ):
            await self._serve(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1")
            if key not in headers:  # the first of repeated ones, as everywhere else
                headers[key] = value.decode("latin-1")
        request_id = pick_request_id(headers.get("x-request-id"))
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        trace_token = None
        if self.trace:
            carrier = {name: headers[name] for name in _TRACE_HEADERS if name in headers}
            trace_token = enter_request_trace(carrier)
        rid_token = request_id_var.set(request_id)
        actor_token = actor_var.set(None)
        started = time.perf_counter()
        statements = start_counting_statements()
        status = 500
        try:
            status = await self._answer(scope, receive, send, headers, request_id)
        except Exception:
            # Only a failure to send the answer gets here: nothing complete was answered.
            log.exception("unhandled error in POST %s", PATH)
            raise
        finally:
            operation = state.get("graphql_operation", "none")
            record_request("POST", PATH, status, started, statements[0], operation)
            request_id_var.reset(rid_token)
            actor_var.reset(actor_token)
            if trace_token is not None:
                leave_request_trace(trace_token)

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str], request_id: str
    ) -> int:
        """Answers the request; the status it was answered with."""
        rid = request_id.encode("latin-1")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return await self._too_large(send, request_id)
        request = PostRequest(scope, receive, headers, self.max_body_bytes)
        try:
            response = await self.route.handle(request)
        except BodyTooLarge:
            return await self._too_large(send, request_id)
        except DatabaseUnavailable as exc:
            response = await database_unavailable(Request(scope, receive), exc)
        except HTTPException as exc:
            response = await http_error(Request(scope, receive), exc)
        except Exception as exc:
            # Logged once, with the request id, and answered as Starlette's error handler does.
            log.exception("unhandled error in POST %s", PATH)
            response = await server_error(Request(scope, receive), exc)
        return await _send(send, response, rid)

    async def _too_large(self, send: Send, request_id: str) -> int:
        await send_too_large(send, self.max_body_bytes, request_id, request_id_header=True)
        return 413


async def _send(send: Send, response: Response, rid: bytes) -> int:
    """The response as Response.__call__ sends it, with the request id among its headers."""
    headers = response.raw_headers
    headers.append((b"x-request-id", rid))
    status = response.status_code
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
    return status


_TRACE_HEADERS = ("traceparent", "tracestate")


def _has_origin(scope: Scope) -> bool:
    return any(name == b"origin" for name, _ in scope["headers"])

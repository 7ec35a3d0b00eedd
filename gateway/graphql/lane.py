"""The fast lane: POST /graphql as a plain ASGI app, past Starlette's router and its wrappers.

Every page view is a POST /graphql. Profiled under the viewer read, Starlette's routing, its
exception wrappers and the request-response adapter took about 9% of the process's Python time
for an answer the route itself already shapes completely. The lane keeps what those layers
did for this one route: the body limit, the same failure answers (gateway.failures), and an
unexpected exception still reaches gateway.middleware to be logged once with the request id.
Anything else (GET, other paths, a browser's cross-origin request when CORS is configured)
takes the full Starlette stack.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.db import DatabaseUnavailable
from gateway.failures import database_unavailable, http_error, server_error
from gateway.graphql.route import GraphQLRoute
from gateway.middleware import BodyLimitMiddleware, BodyTooLarge

PATH = "/graphql"


class GraphQLLane:
    """Sends POST /graphql straight to the route; everything else to `app` (Starlette)."""

    def __init__(self, app: ASGIApp, route: GraphQLRoute, *, cors: bool) -> None:
        self.app = app
        self.route = route
        # With CORS configured, a request carrying an Origin needs CORSMiddleware's headers.
        self.cors = cors
        self.limited = BodyLimitMiddleware(self._answer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == PATH
            and scope["method"] == "POST"
            and not (self.cors and _has_origin(scope))
        ):
            await self.limited(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self.route.handle(request)
        except DatabaseUnavailable as exc:
            response = await database_unavailable(request, exc)
        except HTTPException as exc:
            response = await http_error(request, exc)
        except BodyTooLarge:
            raise  # the body limit answers 413
        except Exception as exc:
            # As Starlette's error middleware does: answer 500, then let it go on to be logged.
            await (await server_error(request, exc))(scope, receive, send)
            raise
        await response(scope, receive, send)


def _has_origin(scope: Scope) -> bool:
    return any(name == b"origin" for name, _ in scope["headers"])

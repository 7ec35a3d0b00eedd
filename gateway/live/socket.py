"""The websocket at /graphql: GraphQL subscriptions over graphql-transport-ws (Strawberry's).

The credential comes in the `connection_init` payload, `{"authorization": "Bearer …"}`, the
same form as the HTTP header (end-user token or API key); without a valid one the socket is
closed with 4403. Only subscriptions run here: queries and mutations go over POST, with the
HTTP route's document budgets. Errors are shaped as the HTTP route shapes them (a code and the
connection's request id; anything unexpected masked). A connection without a subscription for
SUBSCRIPTION_IDLE_SECONDS is closed with 4408.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from graphql import GraphQLError, GraphQLSyntaxError, OperationDefinitionNode, OperationType, parse
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.schema.exceptions import CannotGetOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.types.unset import UNSET, UnsetType

from gateway.auth import Authenticator
from gateway.graphql.documents import MAX_QUERY_BYTES, PUBLIC_MAX_TOKENS
from gateway.graphql.errors import graphql_error
from gateway.live.feed import SUBSCRIPTION_LIMIT, LiveFeed
from gateway.runtime import Runtime
from schema.context import AuthError, Context

log = logging.getLogger("gateway.live")

IDLE_CLOSE_CODE = 4408
INIT_WAIT_SECONDS = 10.0


@dataclass
class LiveContext(Context):
    """One websocket connection's context, shared by its subscriptions."""

    connection_params: dict[str, Any] = field(default_factory=dict)


class LiveHandler(BaseGraphQLTransportWSHandler[LiveContext, None]):
    """Strawberry's protocol handler, with our idle timeout, error shapes and document limits."""

    async def handle(self) -> None:
        watchdog = asyncio.create_task(self._close_when_idle())
        try:
            await super().handle()
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    async def _close_when_idle(self) -> None:
        idle_seconds: float = self.view.idle_seconds  # type: ignore[attr-defined]
        idle_since = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, idle_seconds / 4))
            if self.operations:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= idle_seconds:
                await self.websocket.close(IDLE_CLOSE_CODE, "Idle: no subscription")
                return

    async def handle_subscribe(self, message: Any) -> None:
        refusal = _refusal(message.get("payload"))
        limit = self.max_subscriptions_per_connection
        if refusal is None and limit is not None and len(self.operations) >= limit:
            refusal = GraphQLError(
                f"This connection holds its limit of {limit} subscriptions",
                extensions={"code": SUBSCRIPTION_LIMIT},
            )
        if refusal is not None and self.connection_acknowledged:
            await self.send_message(
                {
                    "id": message["id"],
                    "type": "error",
                    "payload": [self._shaped(refusal, code=(refusal.extensions or {}).get("code"))],
                }
            )
            return
        await super().handle_subscribe(message)

    async def _send_result_stream(
        self, operation: Operation[LiveContext, None], result_source: Any
    ) -> None:
        await super()._send_result_stream(operation, self._reshaped(result_source))

    async def _reshaped(self, results: Any) -> AsyncGenerator[Any, None]:
        async for result in results:
            if result.errors:
                result.errors = [self._reshape(e) for e in result.errors]
            yield result

    def _reshape(self, error: GraphQLError) -> GraphQLError:
        # Strawberry closes the socket on these two; it must still recognise them.
        if isinstance(error, GraphQLSyntaxError) or isinstance(
            error.original_error, CannotGetOperationTypeError
        ):
            return error
        body = self._shaped(error)
        return GraphQLError(body["message"], path=body.get("path"), extensions=body["extensions"])

    def _shaped(self, error: GraphQLError, code: str | None = None) -> dict[str, Any]:
        context = self.context
        staff = context.principal is not None and context.principal.is_staff
        body = graphql_error(error, context.request_id, suggestions=staff, code=code)
        if body["extensions"].get("code") == "INTERNAL_SERVER_ERROR":
            failure = error.original_error
            log.error("subscription failed (request id %s)", context.request_id, exc_info=failure)
        return body


def _refusal(payload: Any) -> GraphQLError | None:
    """Why this subscribe message is not run here, if it is not: only subscriptions, in budget."""
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        message = "subscribe needs a payload with a query"
        return GraphQLError(message, extensions={"code": "BAD_REQUEST"})
    query: str = payload["query"]
    if len(query) > MAX_QUERY_BYTES:
        message = f"Query longer than {MAX_QUERY_BYTES} characters: use variables"
        return GraphQLError(message, extensions={"code": "BAD_REQUEST"})
    try:
        document = parse(query, max_tokens=PUBLIC_MAX_TOKENS)
    except GraphQLError as error:
        return error
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if any(o.operation != OperationType.SUBSCRIPTION for o in operations):
        return GraphQLError(
            "Only subscriptions run over the websocket: send queries and mutations by POST",
            extensions={"code": "BAD_REQUEST"},
        )
    return None


class LiveSocket(GraphQL):
    graphql_transport_ws_handler_class = LiveHandler

    def __init__(
        self, runtime: Runtime, authenticator: Authenticator, feed: LiveFeed, schema: Any
    ) -> None:
        settings = runtime.settings
        super().__init__(
            schema,
            graphql_ide=None,
            allow_queries_via_get=False,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            connection_init_wait_timeout=timedelta(
                seconds=min(INIT_WAIT_SECONDS, settings.subscription_idle_seconds)
            ),
            max_subscriptions_per_connection=settings.subscriptions_per_connection,
            allowed_origins=settings.cors_origins,
        )
        self.runtime = runtime
        self.authenticator = authenticator
        self.feed = feed
        self.idle_seconds = settings.subscription_idle_seconds

    async def get_context(self, request: Any, response: Any) -> LiveContext:
        runtime = self.runtime
        websocket: WebSocket = request
        return LiveContext(
            db=runtime.db,
            catalog=runtime.catalog,
            clock=runtime.clock,
            request_id=uuid.uuid4().hex,
            principal=None,
            app_base_url=runtime.settings.app_base_url,
            accept_language=websocket.headers.get("accept-language"),
            live=self.feed,
        )

    async def on_ws_connect(self, context: LiveContext) -> UnsetType | dict[str, object] | None:
        params = context.connection_params
        authorization = params.get("authorization", params.get("Authorization"))
        if not isinstance(authorization, str) or not authorization:
            raise ConnectionRejectionError()
        try:
            principal = await self.authenticator.authenticate(authorization)
        except AuthError:
            raise ConnectionRejectionError() from None
        if principal is None:
            raise ConnectionRejectionError()
        context.principal = principal
        return UNSET

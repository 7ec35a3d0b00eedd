"""The Starlette application: routes, middleware and the lifespan that owns the database."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

from sqlalchemy import text
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.types import ASGIApp

from gateway import graphiql, migrate, multiprocess
from gateway.auth import Authenticator
from gateway.clock import install_test_clock
from gateway.db import is_unreachable
from gateway.failures import EXCEPTION_HANDLERS, RETRY_AFTER_SECONDS
from gateway.graphql.lane import GraphQLLane
from gateway.graphql.route import Executor, GraphQLRoute
from gateway.jobs import build_dispatcher, outbox_periodically
from gateway.listener import Listener
from gateway.live.feed import LiveFeed
from gateway.live.socket import LiveSocket
from gateway.logs import configure_logging
from gateway.meter import Meter, install_meter
from gateway.middleware import BodyLimitMiddleware, RequestContextMiddleware
from gateway.prometheus import (
    JOINED_READS,
    POOL_IN_USE,
    POOL_WAITING,
    count_changes,
    count_statement,
    metrics_endpoint,
)
from gateway.revocations import listen_for_revocations
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.sweeps import sweep_periodically
from gateway.tracing import TraceContextMiddleware, configure_tracing, instrumented, is_exporting
from gateway.webhooks import stripe_webhook
from schema import schema
from schema.persisted import load_registered_documents
from schema.saved import load_saved_queries


async def healthz(request: Request) -> JSONResponse:
    """The process is up and answering."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """The database answers and its schema is at the migrations' head."""
    runtime: Runtime = request.app.state.runtime
    try:
        async with runtime.db.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        current = await migrate.current_revision(runtime.db.engine)
    except Exception as exc:  # any database fault means "not ready", never a 500
        code = "DATABASE_UNAVAILABLE" if is_unreachable(exc) else "DATABASE_ERROR"
        return _not_ready(request, code, type(exc).__name__)
    head = migrate.head_revision()
    if current != head:
        return _not_ready(request, "MIGRATIONS_PENDING", f"migrations at {current}, head is {head}")
    return JSONResponse({"status": "ok", "revision": current})


def _not_ready(request: Request, code: str, reason: str) -> JSONResponse:
    body = {
        "status": "unavailable",
        "reason": reason,
        "code": code,
        "requestId": request.state.request_id,
    }
    return JSONResponse(body, 503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


class Gateway(Starlette):
    """Starlette with the request-id middleware outside its error middleware.

    Starlette always puts its own error middleware outermost; an error answered there would
    carry no X-Request-ID. POST /graphql takes the lane (gateway.graphql.lane), outside them
    all: it does what the request context and trace context layers do itself.
    """

    graphql_lane: Callable[..., ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        # Tracing outside the request context: the request's log line is written in its span.
        stack: ASGIApp = RequestContextMiddleware(super().build_middleware_stack())
        exporting = is_exporting()
        if not exporting:
            stack = TraceContextMiddleware(stack)
        if self.graphql_lane is not None:
            stack = self.graphql_lane(stack, trace=not exporting)
        return instrumented(stack) if exporting else stack


# The database's figures for /metrics, wired here: gateway.db cannot import gateway.prometheus.
DATABASE_METER = Meter(
    statement=count_statement,
    in_use=POOL_IN_USE,
    waiting=POOL_WAITING,
    changes=count_changes,
    joined_reads=JOINED_READS.observe,
)


def create_app(runtime: Runtime, *, executor: Executor = "compiled") -> Starlette:
    install_meter(DATABASE_METER)
    authenticator = Authenticator(runtime.settings, runtime.db, runtime.catalog, runtime.clock)
    graphql = GraphQLRoute(
        schema,
        runtime,
        authenticator,
        load_saved_queries(),
        executor,
        registered_documents=load_registered_documents(),
    )
    feed = LiveFeed(
        runtime.db,
        max_subscribers=runtime.settings.subscriptions_per_process,
        poll_seconds=runtime.settings.subscription_poll_seconds,
    )
    listener = None
    if not runtime.db.is_sqlite:
        # One LISTEN connection per process, for every channel.
        listener = Listener(runtime.db)
        listen_for_revocations(listener, authenticator)
        feed.attach(listener)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(sweep_periodically(runtime.db, runtime.clock))
        dispatcher = build_dispatcher(runtime)
        outbox = (
            asyncio.create_task(outbox_periodically(runtime, dispatcher))
            if dispatcher is not None
            else None
        )
        try:
            if listener is not None:
                await listener.start()
            await feed.start()
            async with multiprocess.worker_sampling():
                yield
        finally:
            await feed.stop()
            if listener is not None:
                await listener.stop()
            for task in (sweeper, outbox):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if dispatcher is not None:
                await dispatcher.close()
            await runtime.close()

    app = Gateway(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/graphql", graphql.handle, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", LiveSocket(runtime, authenticator, feed, schema)),
            Mount(graphiql.STATIC_PATH, graphiql.static_files(), name="graphiql-static"),
            Route("/api/billing/webhook", stripe_webhook, methods=["POST"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        middleware=[
            *cors_middleware(runtime.settings.cors_origins),
            Middleware(BodyLimitMiddleware),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.graphql_lane = partial(GraphQLLane, route=graphql, cors=bool(runtime.settings.cors_origins))
    app.state.runtime = runtime
    app.state.live_feed = feed
    return app


def cors_middleware(origins: tuple[str, ...]) -> list[Middleware]:
    """Browsers on these origins may call the API; none when CORS_ORIGINS is unset.

    Inside the request-context middleware, so preflight answers carry an X-Request-ID too.
    Without credentials: frontends send their bearer token in a header, never a cookie.
    """
    if not origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
            allow_credentials=False,
            max_age=600,
        )
    ]


def create_app_from_env() -> Starlette:
    """uvicorn's factory: settings from the environment; a bad one stops start-up in one line."""
    install_test_clock()  # each worker process, when a test or development run asks for it
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    runtime = Runtime.from_settings(settings)
    configure_tracing([db.engine for db in (runtime.db, runtime.read_db) if db is not None])
    app = create_app(runtime)
    tune_garbage_collector()
    return app


def tune_garbage_collector() -> None:
    """Keep full collections off the request path.

    Profiled under load, full collections took 24% of the CPU of a viewer read and 62% of
    the support query: every request allocates many short-lived objects, and each sweep walks
    the long-lived ones (schema, catalog, modules) again. Freezing what start-up built and
    collecting less often leaves young garbage to the cheap generation-0 passes.

    Full collections then almost never run on their own, so cyclic garbage that reached the
    oldest generation stays. The one large source of it, evicted parsed documents, is collected
    by the document cache (gateway.graphql.documents) as it evicts; steady traffic evicts
    nothing and keeps the speed-up (bench/attack.py shows both).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)

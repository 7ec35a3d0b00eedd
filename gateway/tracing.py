"""OpenTelemetry: a span per request (a W3C `traceparent` continues the caller's trace), SQL spans.

Spans are exported over OTLP/HTTP only when OTEL_EXPORTER_OTLP_ENDPOINT (or the traces-only
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; the exporter reads the standard OTEL_* variables
itself. Without it nothing is recorded, but every request still has a trace id (the caller's,
or a new one) that each log line carries (gateway.logs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.logs import enter_request_trace, leave_request_trace

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
SERVICE_NAME = "entitlements-gateway"
# Probes and scrapes every few seconds would bury the requests that matter.
UNTRACED_PATHS = "/healthz,/readyz,/metrics"


def is_exporting(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def configure_tracing(engines: list[AsyncEngine]) -> None:
    """Install the process's tracer provider (once per process: OpenTelemetry's rule)."""
    if is_exporting():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        service = os.environ.get("OTEL_SERVICE_NAME", SERVICE_NAME)
        # The sampler comes from OTEL_TRACES_SAMPLER (default: follow the caller, else sample).
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        SQLAlchemyInstrumentor().instrument(
            engines=[engine.sync_engine for engine in engines],
            tracer_provider=provider,
            # It declares sqlalchemy < 2.1 and would silently do nothing on 2.1; the engine
            # events it listens to are unchanged there (tests/gateway/test_trace_export.py).
            skip_dep_check=True,
        )
    else:
        # Non-recording spans cost little and still carry a trace id for the logs.
        trace.set_tracer_provider(TracerProvider(sampler=ALWAYS_OFF))


def instrumented(app: ASGIApp) -> ASGIApp:
    """The OpenTelemetry ASGI instrumentation around `app`, when spans are exported.

    Outermost: the request's log line must be written inside its span. Not exporting,
    TraceContextMiddleware (and the GraphQL lane, both by gateway.logs.RequestTrace): the
    instrumentation costs about 140 µs a request even when it records nothing (a bare ASGI
    app, 2 cores), and the logs need only the trace id.
    """
    return OpenTelemetryMiddleware(
        app, excluded_urls=UNTRACED_PATHS, exclude_spans=["receive", "send"]
    )


class TraceContextMiddleware:
    """The request runs in the caller's trace (W3C traceparent) or a new one; nothing recorded.

    The trace id is worked out only if a log line asks for it (gateway.logs.RequestTrace).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in TRACE_HEADERS
        }
        token = enter_request_trace(carrier)
        try:
            await self.app(scope, receive, send)
        finally:
            leave_request_trace(token)


TRACE_HEADERS = (b"traceparent", b"tracestate")


def name_operation(operation: str) -> None:
    """Name the request's span after the GraphQL operation it ran (a bounded label)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.update_name(f"graphql {operation}")
        span.set_attribute("graphql.operation.name", operation)

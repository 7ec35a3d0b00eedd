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
from starlette.middleware import Middleware

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


def tracing_middleware() -> Middleware:
    """The outermost middleware: the request's log line must be written inside its span."""
    return Middleware(
        OpenTelemetryMiddleware,
        excluded_urls=UNTRACED_PATHS,
        exclude_spans=["receive", "send"],
    )


def name_operation(operation: str) -> None:
    """Name the request's span after the GraphQL operation it ran (a bounded label)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.update_name(f"graphql {operation}")
        span.set_attribute("graphql.operation.name", operation)

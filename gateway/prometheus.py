"""GET /metrics: Prometheus counters of this process, plus a few gauges read from the database.

Counters are per process (each uvicorn worker has its own, as Prometheus expects per target);
the gauges come from the database so every worker reports the same totals.
"""

from __future__ import annotations

import hmac
from datetime import timedelta
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response

from resolvers import billing

if TYPE_CHECKING:  # the unit of work counts changes here; runtime imports it
    from gateway.runtime import Runtime

REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "entitlements_http_requests",
    "HTTP requests answered, by route and status class.",
    ["path", "status"],
    registry=REGISTRY,
)
ENTITLEMENT_CHANGES = Counter(
    "entitlements_changes",
    "Committed entitlement changes, by action.",
    ["action"],
    registry=REGISTRY,
)
SIGNATURE_FAILURES_24H = Gauge(
    "entitlements_webhook_signature_failures_24h",
    "Stripe webhook deliveries refused for their signature in the last 24 hours.",
    registry=REGISTRY,
)
WEBHOOK_EVENTS = Gauge(
    "entitlements_webhook_events",
    "Stored Stripe events by status.",
    ["status"],
    registry=REGISTRY,
)
KNOWN_PATHS = frozenset({"/graphql", "/api/billing/webhook", "/healthz", "/readyz", "/metrics"})


def count_request(path: str, status: int) -> None:
    # Unknown paths are folded into one label: a scanner must not create a series per URL.
    label = path if path in KNOWN_PATHS else "other"
    REQUESTS.labels(path=label, status=f"{status // 100}xx").inc()


def count_changes(actions: list[str]) -> None:
    for action in actions:
        ENTITLEMENT_CHANGES.labels(action=action).inc()


def is_metrics_reader(authorization: str | None, token: str | None) -> bool:
    """Anyone when no METRICS_TOKEN is set; else only `Authorization: Bearer <token>`."""
    if token is None:
        return True
    scheme, _, credentials = (authorization or "").partition(" ")
    # Compared in constant time: the answer's timing must not tell how much of a guess matched.
    matches = hmac.compare_digest(credentials.strip().encode(), token.encode())
    return scheme.lower() == "bearer" and matches


async def metrics_endpoint(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    if not is_metrics_reader(request.headers.get("authorization"), runtime.settings.metrics_token):
        return Response(
            "A bearer token is required (METRICS_TOKEN).\n",
            401,
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            media_type="text/plain",
        )
    now = runtime.clock()
    async with runtime.db.read() as session:
        failures = await billing.count_signature_failures(session, since=now - timedelta(days=1))
        by_status = await billing.count_stripe_events_by_status(session)
    SIGNATURE_FAILURES_24H.set(failures)
    for status in billing.STATUSES:
        WEBHOOK_EVENTS.labels(status=status).set(by_status.get(status, 0))
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

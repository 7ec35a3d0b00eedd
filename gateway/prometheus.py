"""GET /metrics: the gateway's Prometheus metrics, and the gauges read from the database.

With several uvicorn workers (`entitlements serve --workers N`) every metric lives in
prometheus_client's multiprocess files (PROMETHEUS_MULTIPROC_DIR, see gateway.multiprocess), so
whichever worker answers a scrape reports the whole server and counters never go down. The
database gauges are read at scrape time, so every worker reports the same totals.
"""

from __future__ import annotations

import gc
import hmac
import re
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from gateway import multiprocess
from resolvers.billing import events as billing

if TYPE_CHECKING:  # the unit of work counts changes here; runtime imports it
    from gateway.runtime import Runtime

REGISTRY = CollectorRegistry()
if not multiprocess.ENABLED:
    # One process: the standard process, platform and GC collectors. With several workers these
    # would describe only the worker answering the scrape; gateway.multiprocess mirrors them.
    for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        REGISTRY.register(_collector)

REQUESTS = Counter(
    "entitlements_http_requests",
    "HTTP requests answered, by route and status class.",
    ["path", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "entitlements_http_request_duration_seconds",
    "Time to answer an HTTP request, by route and GraphQL operation name.",
    ["path", "operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
STATEMENTS = Histogram(
    "entitlements_sql_statements_per_request",
    "SQL statements an HTTP request handed to the database driver, by route (one that"
    " concurrent requests' reads shared counts for each of them).",
    ["path"],
    buckets=(0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89),
    registry=REGISTRY,
)
JOINED_READS = Histogram(
    "entitlements_joined_read_requests",
    "Requests one by-key read statement answered: concurrent page views' reads joined.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
    registry=REGISTRY,
)
WEBHOOK_SECONDS = Histogram(
    "entitlements_webhook_processing_seconds",
    "Time to store and apply one Stripe delivery, by outcome.",
    ["outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
GC_PAUSE_SECONDS = Histogram(
    "entitlements_gc_pause_seconds",
    "Time the cyclic garbage collector stopped the process, by generation.",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
    registry=REGISTRY,
)
POOL_IN_USE = Gauge(
    "entitlements_db_pool_connections_in_use",
    "Database connections checked out of the pools (all workers).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
POOL_WAITING = Gauge(
    "entitlements_db_pool_waiting",
    "Requests waiting for a database connection from a pool (all workers).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
ENTITLEMENT_CHANGES = Counter(
    "entitlements_changes",
    "Committed entitlement changes, by action.",
    ["action"],
    registry=REGISTRY,
)
KNOWN_PATHS = frozenset({"/graphql", "/api/billing/webhook", "/healthz", "/readyz", "/metrics"})

# The statements of the current request; a list so that the tasks a request spawns (dataloader
# batches, each with a copy of the context) add to the same count.
_statements: ContextVar[list[int] | None] = ContextVar("statements", default=None)


def path_label(path: str) -> str:
    # Unknown paths are folded into one label: a scanner must not create a series per URL.
    return path if path in KNOWN_PATHS else "other"


# Each request's series, looked up once: labels() builds its key and takes a lock every call
# (about 5% of a viewer read when profiled). Bounded as the labels are: KNOWN_PATHS and "other",
# status classes, and OperationLabels' bounded operation names.
_REQUESTS: dict[tuple[str, int], Counter] = {}
_REQUEST_SECONDS: dict[tuple[str, str], Histogram] = {}
_STATEMENTS: dict[str, Histogram] = {}


def count_request(path: str, status: int) -> None:
    key = (path_label(path), status // 100)
    child = _REQUESTS.get(key)
    if child is None:
        child = _REQUESTS[key] = REQUESTS.labels(path=key[0], status=f"{key[1]}xx")
    child.inc()


def start_counting_statements() -> list[int]:
    counter = [0]
    _statements.set(counter)
    return counter


def count_statement(*_: Any) -> None:
    """A SQLAlchemy before_cursor_execute listener: one more statement for this request."""
    counter = _statements.get()
    if counter is not None:
        counter[0] += 1


def observe_request(path: str, operation: str, seconds: float, statements: int) -> None:
    label = path_label(path)
    key = (label, operation)
    timer = _REQUEST_SECONDS.get(key)
    if timer is None:
        timer = _REQUEST_SECONDS[key] = REQUEST_SECONDS.labels(path=label, operation=operation)
    timer.observe(seconds)
    counter = _STATEMENTS.get(label)
    if counter is None:
        counter = _STATEMENTS[label] = STATEMENTS.labels(path=label)
    counter.observe(statements)


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


class OperationLabels:
    """GraphQL operation names as metric labels, in a bounded set.

    Clients name their operations freely, and each label value is a series Prometheus keeps:
    unnamed operations are `anonymous`, names that are not plain identifiers or arrive after
    `limit` distinct ones are `other`. The saved queries' names are always kept.
    """

    _NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

    def __init__(self, reserved: Iterable[str] = (), limit: int = 50) -> None:
        self.limit = limit
        self._known: set[str] = set(reserved)
        self._admitted = 0

    def label(self, name: str | None) -> str:
        if not name:
            return "anonymous"
        if name in self._known:
            return name
        if self._admitted >= self.limit or not self._NAME.fullmatch(name):
            return "other"
        self._admitted += 1
        self._known.add(name)
        return name


def _on_gc(phase: str, info: dict[str, int]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    elif _gc_started:
        GC_PAUSE_SECONDS.labels(generation=str(info["generation"])).observe(
            time.perf_counter() - _gc_started
        )
        _gc_started = 0.0


_gc_started = 0.0
if _on_gc not in gc.callbacks:
    gc.callbacks.append(_on_gc)


class _Families(Collector):
    """Metric families built before the scrape (the database is read asynchronously)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


async def database_gauges(runtime: Runtime) -> list[Metric]:
    now = runtime.clock()
    async with runtime.db.read() as session:
        failures = await billing.count_signature_failures(session, since=now - timedelta(days=1))
        by_status = await billing.count_stripe_events_by_status(session)
    signature_failures = GaugeMetricFamily(
        "entitlements_webhook_signature_failures_24h",
        "Stripe webhook deliveries refused for their signature in the last 24 hours.",
        value=failures,
    )
    events = GaugeMetricFamily(
        "entitlements_webhook_events", "Stored Stripe events by status.", labels=["status"]
    )
    for status in billing.STATUSES:
        events.add_metric([status], by_status.get(status, 0))
    return [signature_failures, events]


async def metrics_endpoint(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    if not is_metrics_reader(request.headers.get("authorization"), runtime.settings.metrics_token):
        return Response(
            "A bearer token is required (METRICS_TOKEN).\n",
            401,
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            media_type="text/plain",
        )
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(_Families(await database_gauges(runtime)))
    body = generate_latest(multiprocess.registry() if multiprocess.ENABLED else REGISTRY)
    return Response(body + generate_latest(scraped), media_type=CONTENT_TYPE_LATEST)

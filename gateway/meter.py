"""Where databases report for /metrics: statements, connections in use and waited for,
committed changes, joined reads.

The app installs the Prometheus meter (gateway/app.py); gateway.db imports no metrics module,
since gateway.prometheus reads the Runtime that holds a Database (that import was a circle).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry


class Gauge(Protocol):
    def inc(self, amount: float = 1) -> None: ...

    def dec(self, amount: float = 1) -> None: ...


@dataclass(frozen=True)
class Meter:
    """What a database reports to, installed once per process."""

    statement: Callable[..., None]
    in_use: Gauge
    waiting: Gauge
    changes: Callable[[list[str]], None]
    # How many requests one joined read answered (gateway.read_batches).
    joined_reads: Callable[[int], None]


class _NoGauge:
    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass


UNMETERED = Meter(
    statement=lambda *_: None,
    in_use=_NoGauge(),
    waiting=_NoGauge(),
    changes=lambda _: None,
    joined_reads=lambda _: None,
)
# Process-wide, like the metrics it feeds; read when an event fires, so engines made before
# install_meter report too.
_installed = UNMETERED


def install_meter(meter: Meter) -> None:
    global _installed
    _installed = meter


def current_meter() -> Meter:
    return _installed


class MeteredPool(AsyncAdaptedQueuePool):
    """The engine's pool, counting who waits for a connection (the pool has no event for it)."""

    def _do_get(self) -> ConnectionPoolEntry:
        waiting = _installed.waiting
        waiting.inc()
        try:
            return super()._do_get()
        finally:
            waiting.dec()


# SQLAlchemy names a pool's logger after its class and quiets only its own `sqlalchemy.*` ones.
logging.getLogger(f"{MeteredPool.__module__}.{MeteredPool.__name__}").setLevel(logging.WARNING)


def meter_engine(engine: AsyncEngine) -> None:
    """Statements per request and connections in use, for /metrics."""
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *_: _installed.statement())
    event.listen(engine.sync_engine, "checkout", _checked_out)
    event.listen(engine.sync_engine, "checkin", _checked_in)


def _checked_out(_: Any, record: ConnectionPoolEntry, __: Any) -> None:
    # The gauge that counted it counts it back, even if a meter is installed meanwhile.
    gauge = record.record_info["in_use"] = _installed.in_use
    gauge.inc()


def _checked_in(_: Any, record: ConnectionPoolEntry) -> None:
    gauge = record.record_info.pop("in_use", None)
    if gauge is not None:
        gauge.dec()

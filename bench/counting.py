"""SQL statements per request: the gateway's counted in-process, the baseline's from its header.

pg_stat_statements needs shared_preload_libraries (a server restart), so instead each scenario's
request is sent through the gateway's ASGI app in this process, with a SQLAlchemy
before_cursor_execute listener counting what reaches the driver (as tests/conftest.py's
StatementCounter does). The first request of a scenario fills the caches (API key, JWT, parsed
document); the count reported is that of the next one, what a warm server does per request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import event

from gateway.app import create_app
from gateway.runtime import Runtime
from gateway.settings import Settings

_NOT_COUNTED = ("BEGIN", "BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")

Request = tuple[str, str, dict[str, str], str | None]


@dataclass
class Count:
    cold: int
    warm: int
    status: int
    statements: list[str]


class StatementCounter:
    def __init__(self, runtime: Runtime) -> None:
        self.engine = runtime.db.engine.sync_engine
        self.statements: list[str] = []
        event.listen(self.engine, "before_cursor_execute", self._on_execute)

    def _on_execute(self, *args: Any) -> None:
        statement = str(args[2])
        if statement.strip().upper() not in _NOT_COUNTED:
            self.statements.append(statement)

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on_execute)


async def count_gateway(
    env: dict[str, str],
    requests: dict[str, Callable[[int], Request]],
    then: dict[str, Callable[[int, bytes], Request | None]] | None = None,
) -> dict[str, Count]:
    """Send each scenario's request twice (`make(n)` gives the n-th) and count the statements.

    A two-step scenario's second request (`then[scenario](n, first answer)`) is sent right
    after the first and counted with it: the figure is the iteration's.
    """
    then = then or {}
    runtime = Runtime.from_settings(Settings.from_env(env))
    app = create_app(runtime)
    counter = StatementCounter(runtime)
    counts: dict[str, Count] = {}
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway.bench"
        ) as client:
            for scenario, make in requests.items():
                figures = []
                status = 0
                for n in range(2):
                    method, path, headers, body = make(n)
                    counter.statements.clear()
                    response = await client.request(method, path, headers=headers, content=body)
                    follow = then.get(scenario)
                    second = follow(n, response.content) if follow is not None else None
                    if second is not None:
                        method, path, headers, body = second
                        response = await client.request(method, path, headers=headers, content=body)
                    status = response.status_code
                    figures.append(len(counter.statements))
                counts[scenario] = Count(figures[0], figures[1], status, list(counter.statements))
    finally:
        counter.close()
        await runtime.close()
    return counts


def count_baseline(base: str, requests: dict[str, Request]) -> dict[str, int | None]:
    """The baseline reports its own count in `x-bench-statements`."""
    counts: dict[str, int | None] = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        for scenario, (method, path, headers, body) in requests.items():
            response = client.request(method, path, headers=headers, content=body)
            value = response.headers.get("x-bench-statements")
            counts[scenario] = int(value) if value and value.isdigit() else None
    return counts

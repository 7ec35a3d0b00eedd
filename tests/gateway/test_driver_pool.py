"""lend_driver's own pool on PostgreSQL: its size limit, its gauges, broken and cut-off
connections replaced, waits that end, and the budget it shares with SQLAlchemy's pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import httpx
import pytest

from gateway.app import create_app
from gateway.db import Database, DatabaseUnavailable
from gateway.driver_pool import LentConnection
from gateway.prometheus import REGISTRY
from gateway.runtime import Runtime
from gateway.settings import Settings
from resolvers.catalog.model import load_catalog
from tests.conftest import asyncpg_dsn
from tests.factories import make_user
from tests.schema.conftest import JWT_SECRET, user_token

VIEWER = "{ viewer { email credits { available } } }"
IN_USE, WAITING = "entitlements_db_pool_connections_in_use", "entitlements_db_pool_waiting"


@pytest.fixture
def backend() -> str:
    return "postgresql"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, jwt_secret=JWT_SECRET)


@pytest.fixture
async def small_runtime(runtime: Runtime) -> AsyncIterator[Runtime]:
    """The test database behind a gateway whose budget is 3 connections: one lent, two pooled."""
    small = Runtime(
        settings=runtime.settings,
        db=Database(runtime.settings.database_url, pool_size=3),
        catalog=load_catalog(runtime.settings.catalog_path),
        clock=runtime.clock,
    )
    yield small
    await small.close()


async def backend_pids(url: str) -> set[int]:
    """The server sessions open on the test database, other than the one asking."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return {row["pid"] for row in rows}


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Polls the server's own view (pg_stat_activity), which has no event to wait on."""
    while not await check():  # noqa: ASYNC110 (a server-side state: nothing to wait on)
        await asyncio.sleep(0.01)


async def terminate(url: str, pid: int) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("SELECT pg_terminate_backend($1)", pid)
        query = "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $1"
        await until(lambda: conn.fetchval(query, pid))
    finally:
        await conn.close()


async def wait_until_running(url: str, pid: int) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        query = "SELECT state = 'active' FROM pg_stat_activity WHERE pid = $1"
        await until(lambda: conn.fetchval(query, pid))
    finally:
        await conn.close()


async def gone(url: str, pid: int) -> bool:
    return pid not in await backend_pids(url)


def gauge(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_many_concurrent_viewer_reads_stay_within_the_budget(small_runtime) -> None:
    db = small_runtime.db
    users = [await make_user(small_runtime, credits_granted=i + 1) for i in range(8)]
    in_use, waiting = gauge(IN_USE), gauge(WAITING)
    transport = httpx.ASGITransport(app=create_app(small_runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:

        async def read(i: int) -> tuple[int, dict]:
            user = users[i % len(users)]
            response = await http.post(
                "/graphql",
                json={"query": VIEWER},
                headers={"Authorization": f"Bearer {user_token(user.id)}"},
            )
            assert response.status_code == 200, response.text
            return i, response.json()["data"]["viewer"]

        answers = await asyncio.gather(*(read(i) for i in range(96)))
    for i, viewer in answers:
        user = users[i % len(users)]
        assert viewer == {"email": user.email, "credits": {"available": i % len(users) + 1}}
    assert db.max_connections == 3
    assert len(await backend_pids(db.url)) <= db.max_connections
    assert (gauge(IN_USE), gauge(WAITING)) == (in_use, waiting)


async def test_a_lent_connection_is_counted_in_use_until_released(runtime) -> None:
    db = runtime.db
    create_app(runtime)  # installs the Prometheus meter
    before = gauge(IN_USE)
    lent = await db.lend_driver()
    assert gauge(IN_USE) == before + 1
    assert await lent.driver.fetchval("SELECT 1") == 1
    await lent.release()
    assert gauge(IN_USE) == before


async def test_a_connection_cut_off_mid_statement_is_replaced(small_runtime) -> None:
    db = small_runtime.db
    lent = await db.lend_driver()
    pid = lent.driver.get_server_pid()
    statement = asyncio.create_task(lent.driver.fetchval("SELECT pg_sleep(30)"))
    await wait_until_running(db.url, pid)
    await terminate(db.url, pid)
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        await statement
    await lent.release(broken=True)

    # The pool's one place was freed: a new session takes it, and it reads.
    again = await db.lend_driver()
    assert again.driver.get_server_pid() != pid
    assert await again.driver.fetchval("SELECT 2") == 2
    await again.release()


async def test_a_cancelled_statement_closes_its_connection(small_runtime) -> None:
    db = small_runtime.db
    lent = await db.lend_driver()
    pid = lent.driver.get_server_pid()
    statement = asyncio.create_task(lent.driver.fetchval("SELECT pg_sleep(30)"))
    await wait_until_running(db.url, pid)
    statement.cancel()
    with pytest.raises(asyncio.CancelledError):
        await statement
    await lent.release(broken=True)
    # Its session is gone with it, and the next lend reads on a fresh one.
    await until(lambda: gone(db.url, pid))
    again = await db.lend_driver()
    assert again.driver.get_server_pid() != pid
    assert await again.driver.fetchval("SELECT 3") == 3
    await again.release()


async def test_a_request_after_its_idle_connection_died_is_answered(small_runtime) -> None:
    # The database restarted (or dropped the session) while the connection sat in the pool.
    db = small_runtime.db
    user = await make_user(small_runtime, credits_granted=4)
    lent = await db.lend_driver()
    pid = lent.driver.get_server_pid()
    await lent.release()
    await terminate(db.url, pid)
    transport = httpx.ASGITransport(app=create_app(small_runtime))
    auth = {"Authorization": f"Bearer {user_token(user.id)}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        first = await http.post("/graphql", json={"query": VIEWER}, headers=auth)
        # The dead session is found out by the statement sent on it: that request is refused
        # as the database being unavailable (a retry succeeds), never a 500 ...
        assert first.status_code in (200, 503), first.text
        second = await http.post("/graphql", json={"query": VIEWER}, headers=auth)
    # ... and the next one is answered on a new session.
    assert second.status_code == 200, second.text
    assert second.json().get("data"), second.text
    assert second.json()["data"]["viewer"]["credits"] == {"available": 4}
    assert pid not in await backend_pids(db.url)


async def test_a_wait_for_a_full_pool_ends_unavailable_and_frees_no_place(small_runtime) -> None:
    db = small_runtime.db
    pool = db._lent_pool
    assert pool is not None and pool.size == 1
    pool.timeout = 0.05
    create_app(small_runtime)  # installs the Prometheus meter
    held = await db.lend_driver()
    waiting = gauge(WAITING)
    with pytest.raises(DatabaseUnavailable):
        await db.lend_driver()
    assert gauge(WAITING) == waiting
    # A waiter cancelled while the connection comes back leaves it to the next one.
    waiter = asyncio.create_task(db.lend_driver())
    await asyncio.sleep(0)
    await held.release()
    waiter.cancel()
    results = await asyncio.gather(waiter, return_exceptions=True)
    if isinstance(results[0], LentConnection):
        await results[0].release()
    again = await db.lend_driver()
    assert await again.driver.fetchval("SELECT 4") == 4
    assert pool.opened == 1
    await again.release()


async def test_an_unreachable_database_is_unavailable_and_holds_no_place() -> None:
    db = Database("postgresql+asyncpg://postgres@127.0.0.1:1/entitlements", pool_size=3)
    try:
        for _ in range(3):
            with pytest.raises(DatabaseUnavailable):
                await db.lend_driver()
        assert db._lent_pool is not None and db._lent_pool.opened == 0
    finally:
        await db.dispose()


async def test_dispose_closes_idle_connections_and_a_later_lend_opens_anew(small_runtime) -> None:
    db = small_runtime.db
    lent = await db.lend_driver()
    pid = lent.driver.get_server_pid()
    await lent.release()
    await db.dispose()
    await until(lambda: gone(db.url, pid))
    again = await db.lend_driver()
    assert again.driver.get_server_pid() != pid
    assert await again.driver.fetchval("SELECT 5") == 5
    await again.release()


async def test_a_budget_too_small_to_split_keeps_two_pooled_and_lends_from_them(
    runtime: Runtime,
) -> None:
    """The CLI's budget of 2: the hold sweep holds one pooled connection while it writes."""
    db = Database(runtime.settings.database_url, pool_size=2)
    try:
        assert db._lent_pool is None
        assert db.max_connections == 2
        assert db.engine.pool.size() == 2  # type: ignore[attr-defined]
        lent = await db.lend_driver()
        try:
            assert await lent.driver.fetchval("SELECT 1") == 1
        finally:
            await lent.release()
    finally:
        await db.dispose()

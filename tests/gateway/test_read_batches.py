"""Reads joined across concurrent requests (gateway.read_batches), on PostgreSQL.

Differential: the same reads, each alone on a lent connection and all at once through the
batches, give every caller the same rows in the same order, whatever keys (missing, repeated,
shared between callers) and per-key limits hypothesis draws. Joined: the callers of one turn of
the loop share one statement per read and parameters. Failures reach every caller of a batch;
a caller cancelled leaves the others answered. Over HTTP against two `entitlements serve`
processes: every client's read after its own spend sees the spend, with enough clients at once
that reads join.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from gateway.app import create_app
from gateway.compiled.driver import (
    NEWEST_EVENTS,
    NEWEST_PAYMENTS,
    OPEN_GRANTS,
    USERS_BY_EMAIL,
    USERS_BY_ID,
    DriverRead,
)
from gateway.db import Database
from gateway.prometheus import REGISTRY
from gateway.read_batches import ReadBatches
from gateway.settings import Settings
from resolvers.models import CreditEvent
from tests.conftest import StatementCounter, asyncpg_dsn
from tests.factories import make_user
from tests.gateway.gateway_process import two_served
from tests.gateway.test_usage_concurrency import service_key
from tests.schema.conftest import JWT_SECRET, user_token
from tests.schema.test_compiled import seed

NO_CURSOR = 2**62
TIMEOUT = 20.0  # seconds: a caller left waiting fails the test instead of hanging it
BY_USER = [OPEN_GRANTS, NEWEST_EVENTS, NEWEST_PAYMENTS]


@pytest.fixture
def backend() -> str:
    return "postgresql"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, jwt_secret=JWT_SECRET)


def batches_of(db: Database) -> ReadBatches:
    assert db.read_batches is not None, "PostgreSQL joins its compiled reads"
    return db.read_batches


async def alone(db: Database, read: DriverRead, keys: list[Any], named: dict[str, Any]) -> list:
    lent = await db.lend_driver()
    try:
        return await read.fetch(lent.events, lent.driver, keys, **named)
    finally:
        await lent.release()


def as_compared(rows: list[Any]) -> list[tuple[str, tuple[Any, ...]]]:
    # The row's kind too: a joined read hands out the very rows its statement read.
    return [(type(row).__name__, tuple(row)) for row in rows]


def calls(ids: list[int], emails: list[str], cursors: list[int]) -> st.SearchStrategy:
    """One caller's read: which read, its keys, its named parameters."""
    missing_id = max(ids) + 1000
    by_id = st.lists(st.sampled_from([*ids, missing_id]), max_size=4)
    by_email = st.lists(st.sampled_from([*emails, "nobody@example.com"]), max_size=3)
    paged = st.fixed_dictionaries(
        {"limit": st.integers(1, 4), "before": st.sampled_from([NO_CURSOR, *cursors])}
    )
    return st.one_of(
        st.tuples(st.just(USERS_BY_ID), by_id, st.just({})),
        st.tuples(st.just(USERS_BY_EMAIL), by_email, st.just({})),
        st.tuples(st.just(OPEN_GRANTS), by_id, st.just({})),
        st.tuples(st.sampled_from(BY_USER[1:]), by_id, paged),
    )


@pytest.mark.slow
async def test_joined_reads_give_each_caller_what_its_read_alone_gives(runtime, clock) -> None:
    db = runtime.db
    batches = batches_of(db)
    emails, ids = await seed(runtime, clock)
    async with db.read() as session:
        event_ids = list(await session.scalars(select(CreditEvent.id)))
    cursors = sorted(event_ids)[:: max(1, len(event_ids) // 5)]
    counter = StatementCounter(db)
    loop = asyncio.get_running_loop()
    joined_once: list[bool] = []

    async def compare(drawn: list[tuple[DriverRead, list[Any], dict[str, Any]]]) -> None:
        expected = [await alone(db, read, keys, dict(named)) for read, keys, named in drawn]
        counter.reset()
        answers = await asyncio.gather(
            *(batches.fetch(read, keys, dict(named)) for read, keys, named in drawn)
        )
        for (read, keys, named), answer, wanted in zip(drawn, answers, expected, strict=True):
            assert as_compared(answer) == as_compared(wanted), (read.row.__name__, keys, named)
        # One statement per read and parameters: every caller asked in the same turn.
        groups = {(id(read), tuple(named.items())) for read, _, named in drawn}
        assert counter.count == len(groups), counter.statements
        joined_once.append(len(groups) < len(drawn))

    @hypothesis_settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(drawn=st.lists(calls(ids, emails, cursors), min_size=1, max_size=10))
    def check(drawn: list[tuple[DriverRead, list[Any], dict[str, Any]]]) -> None:
        asyncio.run_coroutine_threadsafe(compare(drawn), loop).result()

    try:
        await asyncio.to_thread(check)
    finally:
        counter.close()
    assert any(joined_once), "no draw joined two callers' reads"


async def test_viewer_reads_at_once_share_statements(runtime, count_statements) -> None:
    users = [await make_user(runtime, credits_granted=i + 1) for i in range(6)]
    transport = httpx.ASGITransport(app=create_app(runtime))
    query = "{ viewer { id email credits { available } } }"
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:

        async def read(user_id: int) -> dict:
            auth = {"Authorization": f"Bearer {user_token(user_id)}"}
            response = await http.post("/graphql", json={"query": query}, headers=auth)
            assert response.status_code == 200, response.text
            return response.json()["data"]["viewer"]

        await read(users[0].id)  # the schema's first request: caches warm
        count_statements.reset()
        before = metric_sums()
        answers = await asyncio.gather(*(read(users[i % 6].id) for i in range(30)))
        after = metric_sums()
    for i, viewer in enumerate(answers):
        user = users[i % 6]
        assert viewer == {
            "id": str(user.id),
            "email": user.email,
            "credits": {"available": i % 6 + 1},
        }
    assert 1 <= count_statements.count < 30, count_statements.statements
    counted, joined, answered = (a - b for a, b in zip(after, before, strict=True))
    # Each request counts the statement it waited on, shared or not: one each, as alone.
    assert counted == 30
    assert (joined, answered) == (count_statements.count, 30)


def metric_sums() -> tuple[float, float, float]:
    """Statements /graphql requests counted; joined statements, and the requests they answered."""

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    return (
        value("entitlements_sql_statements_per_request_sum", path="/graphql"),
        value("entitlements_joined_read_requests_count"),
        value("entitlements_joined_read_requests_sum"),
    )


@asynccontextmanager
async def users_locked(url: str) -> AsyncIterator[asyncpg.Connection]:
    """The users table locked by another session: reads of it wait, their statements sent."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        try:
            yield conn
        finally:
            await transaction.rollback()
    finally:
        await conn.close()


async def waiting_on_the_lock(conn: asyncpg.Connection, count: int) -> list[int]:
    """The server sessions whose statement waits for the users table, once there are `count`."""

    async def sessions() -> list[int]:
        # The lock's session is in a transaction, which would see its first snapshot forever.
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            " AND query LIKE '%FROM users%' ORDER BY query_start"
        )
        return [row["pid"] for row in rows]

    async def poll() -> list[int]:
        while len(found := await sessions()) < count:  # noqa: ASYNC110 (a server-side state)
            await asyncio.sleep(0.01)
        return found

    return await asyncio.wait_for(poll(), TIMEOUT)


async def test_a_caller_arriving_while_a_statement_is_out_gets_a_statement_of_its_own(
    runtime,
) -> None:
    batches = batches_of(runtime.db)
    first_user, late_user = [await make_user(runtime) for _ in range(2)]
    async with users_locked(runtime.db.url) as lock:
        first = asyncio.create_task(batches.fetch(USERS_BY_ID, [first_user.id], {}))
        await waiting_on_the_lock(lock, 1)
        # The first statement is out: this caller cannot join it, and sends its own.
        late = asyncio.create_task(batches.fetch(USERS_BY_ID, [late_user.id], {}))
        await waiting_on_the_lock(lock, 2)
    answers = await asyncio.wait_for(asyncio.gather(first, late), TIMEOUT)
    assert [[row.id for row in rows] for rows in answers] == [[first_user.id], [late_user.id]]


async def test_a_statement_cut_off_reaches_every_caller_and_its_session_is_replaced(
    runtime,
) -> None:
    batches = batches_of(runtime.db)
    users = [await make_user(runtime) for _ in range(3)]
    async with users_locked(runtime.db.url) as lock:
        callers = [asyncio.create_task(batches.fetch(USERS_BY_ID, [u.id], {})) for u in users]
        (pid,) = await waiting_on_the_lock(lock, 1)
        await lock.execute("SELECT pg_terminate_backend($1)", pid)
        answers = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), TIMEOUT)
    assert all(isinstance(a, Exception) for a in answers), answers
    # The next batch reads, on another session.
    lent = await runtime.db.lend_driver()
    try:
        assert lent.driver.get_server_pid() != pid
    finally:
        await lent.release()
    rows = await batches.fetch(USERS_BY_ID, [users[0].id], {})
    assert [row.id for row in rows] == [users[0].id]


async def test_a_batch_cancelled_mid_statement_fails_its_callers_and_closes_its_session(
    runtime,
) -> None:
    # What the process stopping does to a batch under way.
    batches = batches_of(runtime.db)
    users = [await make_user(runtime) for _ in range(2)]
    async with users_locked(runtime.db.url) as lock:
        callers = [asyncio.create_task(batches.fetch(USERS_BY_ID, [u.id], {})) for u in users]
        (pid,) = await waiting_on_the_lock(lock, 1)
        (batch,) = batches._running
        batch.cancel()
        answers = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), TIMEOUT)
        # To its requests, a lost database (503, retry): nobody cancelled them.
        assert all(isinstance(a, ConnectionError) for a in answers), answers
    # Its connection, in an unknown state, was closed rather than lent again: its session ends
    # (once the lock that held its statement is gone).
    conn = await asyncpg.connect(asyncpg_dsn(runtime.db.url))
    try:
        await asyncio.wait_for(until_gone(conn, pid), TIMEOUT)
    finally:
        await conn.close()


async def until_gone(conn: asyncpg.Connection, pid: int) -> None:
    query = "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $1"
    while not await conn.fetchval(query, pid):  # noqa: ASYNC110 (a server-side state)
        await asyncio.sleep(0.01)


async def test_a_fault_in_handing_out_fails_the_callers_instead_of_leaving_them_waiting(
    runtime,
) -> None:
    def broken_meter(requests: int) -> None:
        raise RuntimeError("the metrics backend is broken")

    batches = ReadBatches(runtime.db.lend_driver, joined=lambda: None, answered=broken_meter)
    users = [await make_user(runtime) for _ in range(3)]
    answers = await asyncio.wait_for(
        asyncio.gather(
            *(batches.fetch(USERS_BY_ID, [u.id], {}) for u in users), return_exceptions=True
        ),
        TIMEOUT,
    )
    assert all(isinstance(a, RuntimeError) for a in answers), answers


async def test_a_cancelled_caller_leaves_the_others_answered(runtime) -> None:
    batches = batches_of(runtime.db)
    users = [await make_user(runtime) for _ in range(3)]
    tasks = [asyncio.create_task(batches.fetch(USERS_BY_ID, [u.id], {})) for u in users]
    await asyncio.sleep(0)  # every caller has joined the batch; its statement is not sent yet
    tasks[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    for user, task in zip(users[1:], tasks[1:], strict=True):
        assert [row.id for row in await task] == [user.id]


async def test_closing_waits_for_the_batches_under_way(runtime) -> None:
    batches = batches_of(runtime.db)
    user = await make_user(runtime)
    task = asyncio.create_task(batches.fetch(USERS_BY_ID, [user.id], {}))
    await asyncio.sleep(0)
    await batches.close()
    assert task.done()
    assert [row.id for row in task.result()] == [user.id]


CONSUME = """
mutation ($input: ConsumeCreditsInput!) {
  consumeCredits(input: $input) {
    __typename
    ... on CreditChange { user { credits { available } } }
  }
}
"""
VIEWER = "{ viewer { credits { available } } }"


@pytest.fixture
def two_gateways(database_url: str, tmp_path: Path) -> Iterator[list[str]]:
    with two_served(database_url, tmp_path, JWT_SECRET=JWT_SECRET) as bases:
        yield bases


def joined_read_requests(bases: list[str]) -> tuple[float, float]:
    """(statements, requests they answered) of the joined reads, summed over the gateways."""
    statements = requests = 0.0
    for base in bases:
        for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
            if family.name != "entitlements_joined_read_requests":
                continue
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    statements += sample.value
                elif sample.name.endswith("_sum"):
                    requests += sample.value
    return statements, requests


class Connection:
    """One keep-alive HTTP/1.1 connection with nothing between a request and the socket.

    httpx sends a burst of requests one after another, each a few hundred microseconds of
    client work apart, and a gateway answers each alone before the next arrives; written
    here, a burst's requests reach the gateway together, as a page's do under load.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, base: str) -> Connection:
        host, port = base.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def post(self, body: dict[str, Any], authorization: str) -> tuple[int, dict]:
        content = orjson.dumps(body)
        head = (
            "POST /graphql HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            f"Authorization: {authorization}\r\nContent-Length: {len(content)}\r\n\r\n"
        )
        self.writer.write(head.encode() + content)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, orjson.loads(await self.reader.readexactly(length))

    def close(self) -> None:
        self.writer.close()


@pytest.mark.slow
async def test_two_gateways_reads_after_spends_see_them(runtime, two_gateways) -> None:
    key = await service_key(runtime)
    users = [await make_user(runtime, credits_granted=50) for _ in range(24)]
    rounds = 6
    before = joined_read_requests(two_gateways)
    # Every client reads at once after its spend: each round's reads arrive together.
    barrier = asyncio.Barrier(len(users))
    limits = httpx.Limits(max_connections=48)
    readers = [await Connection.open(two_gateways[n % 2]) for n in range(len(users))]
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:

        async def client(n: int) -> list[tuple[int, int]]:
            """(credits after each spend, as it answered; as the read after it saw them)."""
            user = users[n]
            seen = []
            for _ in range(rounds):
                spend = {"userId": str(user.id), "amount": 1, "reason": "model call"}
                # Spent on the gateway the client does not read from.
                spent = await http.post(
                    f"{two_gateways[(n + 1) % 2]}/graphql",
                    json={"query": CONSUME, "variables": {"input": spend}},
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert spent.status_code == 200, spent.text
                change = spent.json()["data"]["consumeCredits"]
                assert change["__typename"] == "CreditChange", change
                await asyncio.wait_for(barrier.wait(), TIMEOUT)
                # Its (joined) read is sent after the spend answered.
                status, read = await asyncio.wait_for(
                    readers[n].post({"query": VIEWER}, f"Bearer {user_token(user.id)}"), TIMEOUT
                )
                assert status == 200, read
                seen.append(
                    (
                        change["user"]["credits"]["available"],
                        read["data"]["viewer"]["credits"]["available"],
                    )
                )
            return seen

        try:
            seen = await asyncio.gather(*(client(n) for n in range(len(users))))
        finally:
            for reader in readers:
                reader.close()
    for spends in seen:
        assert [read for _, read in spends] == [after for after, _ in spends]
        afters = [after for after, _ in spends]
        assert afters == list(range(afters[0], afters[0] - rounds, -1)), afters
    statements, requests = (
        a - b for a, b in zip(joined_read_requests(two_gateways), before, strict=True)
    )
    # Every read went through the joined reads; some shared a statement.
    assert requests == len(users) * rounds
    assert statements < requests

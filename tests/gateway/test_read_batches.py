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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
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
from gateway.read_batches import ReadBatches
from gateway.settings import Settings
from resolvers.models import CreditEvent
from tests.conftest import StatementCounter
from tests.factories import make_user
from tests.gateway.gateway_process import two_served
from tests.gateway.test_usage_concurrency import service_key
from tests.schema.conftest import JWT_SECRET, user_token
from tests.schema.test_compiled import seed

NO_CURSOR = 2**62
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
        answers = await asyncio.gather(*(read(users[i % 6].id) for i in range(30)))
    for i, viewer in enumerate(answers):
        user = users[i % 6]
        assert viewer == {
            "id": str(user.id),
            "email": user.email,
            "credits": {"available": i % 6 + 1},
        }
    assert 1 <= count_statements.count < 30, count_statements.statements


async def test_a_failed_statement_reaches_every_caller_of_its_batch(runtime) -> None:
    batches = batches_of(runtime.db)
    users = [await make_user(runtime) for _ in range(3)]
    # A limit PostgreSQL refuses: one statement, three callers, three errors.
    broken = {"limit": "many", "before": NO_CURSOR}
    answers = await asyncio.gather(
        *(batches.fetch(NEWEST_EVENTS, [u.id], dict(broken)) for u in users),
        return_exceptions=True,
    )
    assert all(isinstance(a, Exception) for a in answers), answers
    # The pool is whole after it: the next batch reads.
    rows = await batches.fetch(USERS_BY_ID, [users[0].id], {})
    assert [row.id for row in rows] == [users[0].id]


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


@pytest.mark.slow
async def test_two_gateways_reads_after_spends_see_them(runtime, two_gateways) -> None:
    key = await service_key(runtime)
    users = [await make_user(runtime, credits_granted=50) for _ in range(24)]
    rounds = 6
    before = joined_read_requests(two_gateways)
    limits = httpx.Limits(max_connections=48)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:

        async def client(n: int) -> list[tuple[int, int]]:
            """(credits after each spend, as it answered; as the read after it saw them)."""
            user = users[n]
            seen = []
            for turn in range(rounds):
                spend = {"userId": str(user.id), "amount": 1, "reason": "model call"}
                spent = await http.post(
                    f"{two_gateways[(n + turn) % 2]}/graphql",
                    json={"query": CONSUME, "variables": {"input": spend}},
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert spent.status_code == 200, spent.text
                change = spent.json()["data"]["consumeCredits"]
                assert change["__typename"] == "CreditChange", change
                # Read on the other gateway: its (joined) read is sent after the spend answered.
                read = await http.post(
                    f"{two_gateways[(n + turn + 1) % 2]}/graphql",
                    json={"query": VIEWER},
                    headers={"Authorization": f"Bearer {user_token(user.id)}"},
                )
                assert read.status_code == 200, read.text
                viewer = read.json()["data"]["viewer"]
                seen.append(
                    (change["user"]["credits"]["available"], viewer["credits"]["available"])
                )
            return seen

        seen = await asyncio.gather(*(client(n) for n in range(len(users))))
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

"""recordUsage in one statement on PostgreSQL, and the cases that go to the Python rule."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from gateway.db import DatabaseUnavailable
from gateway.runtime import Runtime
from resolvers.entitlements import overrides, usage
from resolvers.errors import LimitExceeded, NoAccess, UserNotFound
from resolvers.ledger.accounts import lock_account, save_account
from resolvers.ledger.entries import Actor
from resolvers.ledger.statements import ONE_TRANSACTION
from resolvers.models import UsageEvent, User
from resolvers.users import UserRef
from tests.conftest import Clock, StatementCounter, kill_server_sessions
from tests.factories import SUPPORT, make_user

AI_BACKEND = Actor(name="ai-backend", source="usage", request_id="req-usage-statement")


async def record(
    runtime: Runtime,
    user_id: int,
    quantity: int = 1,
    *,
    feature: str = "pdf_exports",
    key: str | None = None,
    one_transaction: bool = False,
) -> object:
    async def work(session):
        if one_transaction:
            session.info[ONE_TRANSACTION] = True
        return await usage.record_usage(
            session,
            user=UserRef(user_id=user_id),
            feature=feature,
            quantity=quantity,
            actor=AI_BACKEND,
            now=runtime.clock(),
            catalog=runtime.catalog,
            idempotency_key=key,
        )

    return await runtime.db.write(work)


async def usage_rows(runtime: Runtime, user_id: int) -> tuple[dict, list[tuple]]:
    async with runtime.db.read() as session:
        row = await session.get(User, user_id)
        events = await session.scalars(
            select(UsageEvent).where(UsageEvent.user_id == user_id).order_by(UsageEvent.id)
        )
        return row.entitlement_usage, [
            (e.feature, e.period, e.quantity, e.used_after, e.idempotency_key, e.request_id)
            for e in events
        ]


async def test_a_plain_record_usage_is_one_statement_on_postgresql_and_four_on_sqlite(
    runtime: Runtime, backend: str, count_statements: StatementCounter
) -> None:
    user = await make_user(runtime)  # free: 5 PDF exports a month
    count_statements.reset()
    result = await record(runtime, user.id, 2, key="usage-counted")
    assert isinstance(result, usage.UsageRecorded), result
    # SQLite: the lock with the user's read, the key's lookup, the row's UPDATE, the INSERT.
    assert count_statements.count == (1 if backend == "postgresql" else 4), (
        count_statements.statements
    )
    assert (result.entitlement.usage, result.entitlement.remaining) == (2, 3)
    assert (result.event.quantity, result.event.used_after, result.replayed) == (2, 2, False)
    assert result.user.entitlement_usage["pdf_exports"]["used"] == 2
    stored, events = await usage_rows(runtime, user.id)
    assert stored == result.user.entitlement_usage
    assert events == [
        ("pdf_exports", result.event.period, 2, 2, "usage-counted", "req-usage-statement")
    ]
    assert result.event.id == (await _event_ids(runtime, user.id))[0]

    # The retry is the Python rule's (the function hands a used key over): the first answer.
    count_statements.reset()
    again = await record(runtime, user.id, 2, key="usage-counted")
    assert isinstance(again, usage.UsageRecorded) and again.replayed
    assert (again.event.id, again.entitlement.usage) == (result.event.id, 2)
    if backend == "postgresql":
        assert count_statements.statements[0].startswith("SELECT * FROM record_usage(")
        assert count_statements.count > 1


async def _event_ids(runtime: Runtime, user_id: int) -> list[int]:
    async with runtime.db.read() as session:
        ids = await session.scalars(select(UsageEvent.id).where(UsageEvent.user_id == user_id))
        return list(ids)


async def test_the_limit_no_access_and_an_unknown_user_answer_alike_in_one_statement(
    runtime: Runtime, backend: str, count_statements: StatementCounter
) -> None:
    user = await make_user(runtime)  # free: 5 PDF exports a month, no API access
    assert isinstance(await record(runtime, user.id, 5), usage.UsageRecorded)
    count_statements.reset()
    assert await record(runtime, user.id, 1) == LimitExceeded(
        feature="pdf_exports", limit=5, usage=5, requested=1
    )
    assert await record(runtime, user.id, 1, feature="api_access") == NoAccess(feature="api_access")
    assert await record(runtime, 10_000_000) == UserNotFound(user_id=10_000_000)
    if backend == "postgresql":
        assert count_statements.count == 3, count_statements.statements
    # A give-back needs no access and stops at 0; nothing else was counted.
    back = await record(runtime, user.id, -9)
    assert isinstance(back, usage.UsageRecorded)
    assert (back.event.quantity, back.entitlement.usage, back.entitlement.remaining) == (-5, 0, 5)
    _, events = await usage_rows(runtime, user.id)
    assert [(e[2], e[3]) for e in events] == [(5, 5), (-5, 0)]


async def test_inside_a_unit_of_work_that_commits_more_the_count_runs_in_its_transaction(
    runtime: Runtime, backend: str, count_statements: StatementCounter
) -> None:
    user = await make_user(runtime, tier="pro")
    count_statements.reset()
    result = await record(runtime, user.id, 3, feature="projects", one_transaction=True)
    assert isinstance(result, usage.UsageRecorded), result
    assert (result.entitlement.usage, result.entitlement.limit) == (3, 20)
    if backend == "postgresql":
        assert count_statements.statements == [count_statements.statements[0]]
        assert count_statements.statements[0].startswith("SELECT * FROM record_usage(")
    stored, events = await usage_rows(runtime, user.id)
    assert stored == {"projects": {"period": "total", "used": 3}}
    assert [e[:4] for e in events] == [("projects", "total", 3, 3)]


async def test_an_override_of_the_feature_goes_to_the_python_rule(
    runtime: Runtime, backend: str, count_statements: StatementCounter
) -> None:
    user = await make_user(runtime)
    overridden = await runtime.db.write(
        lambda s: overrides.set_entitlement_override(
            s,
            user=UserRef(user_id=user.id),
            feature="pdf_exports",
            has_access=True,
            limit=1,
            reason="trial of exports",
            actor=SUPPORT,
            now=runtime.clock(),
            catalog=runtime.catalog,
        )
    )
    assert isinstance(overridden, overrides.OverrideSet), overridden
    count_statements.reset()
    assert isinstance(await record(runtime, user.id), usage.UsageRecorded)
    # PostgreSQL: the function's 'fallback', then the rule's lock, UPDATE and INSERT.
    assert count_statements.count == (4 if backend == "postgresql" else 3)
    assert await record(runtime, user.id) == LimitExceeded(
        feature="pdf_exports", limit=1, usage=1, requested=1
    )
    # Other features of the user still count in one statement on PostgreSQL.
    count_statements.reset()
    assert isinstance(await record(runtime, user.id, feature="projects"), usage.UsageRecorded)
    assert count_statements.count == (1 if backend == "postgresql" else 3)


# Stripe billing periods as tests/resolvers/test_usage_period.py has them, through the database.
@pytest.mark.parametrize(
    ("period_end", "now", "period"),
    [
        ("2027-03-20T08:00:00", "2027-03-01T00:00:00", "2027-02-20T08:00:00Z"),
        ("2027-03-20T08:00:00", "2027-03-20T08:00:00", "2027-03-20T08:00:00Z"),
        ("2027-03-20T08:00:00", "2027-06-25T00:00:00", "2027-06-20T08:00:00Z"),
        ("2027-01-31T12:00:00", "2027-02-15T00:00:00", "2027-01-31T12:00:00Z"),
        ("2027-01-31T12:00:00", "2027-03-30T00:00:00", "2027-02-28T12:00:00Z"),
        ("2027-01-31T12:00:00", "2026-12-31T11:00:00", "2026-11-30T12:00:00Z"),
        ("2027-01-31T12:00:00.250000", "2027-05-31T12:00:00.200000", "2027-04-30T12:00:00Z"),
    ],
)
async def test_a_subscriber_counts_in_stripe_billing_periods_in_one_statement(
    runtime: Runtime,
    clock: Clock,
    count_statements: StatementCounter,
    backend: str,
    period_end: str,
    now: str,
    period: str,
) -> None:
    user = await make_user(runtime, tier="pro")

    async def subscribe(session):
        account = await lock_account(session, UserRef(user_id=user.id))
        account.stripe_subscription_id = "sub_usage"
        account.subscription_status = "active"
        account.subscription_period_end = datetime.fromisoformat(period_end).replace(tzinfo=UTC)
        await save_account(session, account)

    await runtime.db.write(subscribe)
    clock.now = datetime.fromisoformat(now).replace(tzinfo=UTC)
    count_statements.reset()
    result = await record(runtime, user.id, 4)
    assert isinstance(result, usage.UsageRecorded), result
    assert result.event.period == period
    assert count_statements.count == (1 if backend == "postgresql" else 3)
    assert result.entitlement.resets_at is not None and result.entitlement.resets_at > clock.now


async def test_a_count_recovers_after_the_servers_sessions_are_killed(
    runtime: Runtime, backend: str, database_url: str
) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has no server sessions to kill")
    user = await make_user(runtime, tier="pro")
    assert isinstance(await record(runtime, user.id, feature="projects"), usage.UsageRecorded)
    assert await kill_server_sessions(database_url) >= 1
    # The dead pooled connection may fail one count (as unavailable), never be lent again.
    outcomes = []
    for _ in range(3):
        try:
            outcomes.append(await record(runtime, user.id, feature="projects"))
        except DatabaseUnavailable:
            outcomes.append(None)
    assert all(isinstance(o, usage.UsageRecorded) for o in outcomes[1:]), outcomes
    counted = 1 + sum(o is not None for o in outcomes)
    assert outcomes[-1].entitlement.usage == counted
    stored, _ = await usage_rows(runtime, user.id)
    assert stored["projects"]["used"] == counted

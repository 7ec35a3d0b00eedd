"""consumeCredits and recordUsage over HTTP: on PostgreSQL one statement before any session.

Without an outbox the gateway runs the spend's and the count's function on a lent driver
connection, with no AsyncSession and no SQLAlchemy Connection (gateway.db.Database.write's
`alone`). What a committed change owes still happens: its `entitlement_change` line, its
metric, and the same answer. A change the function hands back goes to the Python rule in a
transaction without asking the function again; with an outbox the change commits in the
transaction that writes the outbox's rows. SQLite runs every write in a transaction.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db import DatabaseUnavailable
from gateway.runtime import Runtime
from resolvers.ledger import credits
from resolvers.ledger.entries import Actor
from resolvers.ledger.statements import ONE_TRANSACTION
from resolvers.models import CreditEvent, UsageEvent
from resolvers.users import UserRef
from tests.conftest import StatementCounter, kill_server_sessions
from tests.factories import make_user
from tests.schema.conftest import GraphQLClient, data_of

CONSUME = """mutation ($input: ConsumeCreditsInput!) { consumeCredits(input: $input) {
  __typename ... on CreditChange { replayed event { amount balanceAfter } user { id } }
  ... on InsufficientCredits { available requested } } }"""
USAGE = """mutation ($input: RecordUsageInput!) { recordUsage(input: $input) {
  __typename ... on EntitlementUsage { replayed quantity entitlement { usage remaining } }
  ... on LimitExceeded { limit usage } } }"""
AI = Actor(name="ai-backend", source="usage", request_id="req-alone")
SPEND_CALL = "SELECT * FROM spend_credits("
USAGE_CALL = "SELECT * FROM record_usage("


class Connections:
    """SQLAlchemy Connections the engine opened: a session's write opens one, a lent one not."""

    def __init__(self, runtime: Runtime) -> None:
        self.opened = 0
        self._engine = runtime.db.engine.sync_engine
        event.listen(self._engine, "engine_connect", self._on_connect)

    def _on_connect(self, *_: Any) -> None:
        self.opened += 1

    def close(self) -> None:
        event.remove(self._engine, "engine_connect", self._on_connect)


@pytest.fixture
def connections(runtime: Runtime) -> Iterator[Connections]:
    counted = Connections(runtime)
    yield counted
    counted.close()


class ChangeLines(logging.Handler):
    """The `entitlement_change` lines logged, as the fields the JSON formatter writes."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.fields.append(record.fields)  # type: ignore[attr-defined]

    def actions(self) -> list[str]:
        return [f["action"] for f in self.fields if f.get("event") == "entitlement_change"]


@pytest.fixture
def change_lines() -> Iterator[ChangeLines]:
    handler = ChangeLines()
    changes = logging.getLogger("entitlements.changes")
    level = changes.level
    changes.addHandler(handler)
    changes.setLevel(logging.INFO)
    yield handler
    changes.removeHandler(handler)
    changes.setLevel(level)


async def changes_metric(gql: GraphQLClient, action: str) -> float:
    text = (await gql.http.get("/metrics")).text
    found = re.search(rf'entitlements_changes_total{{action="{action}"}} ([0-9.]+)', text)
    return float(found.group(1)) if found else 0.0


async def count_rows(runtime: Runtime, table: Any, user_id: int) -> int:
    async with runtime.db.read() as session:
        counted = await session.scalar(
            select(func.count()).select_from(table).where(table.user_id == user_id)
        )
    return int(counted or 0)


async def test_a_spend_and_a_count_are_one_statement_and_no_session_on_postgresql(
    runtime: Runtime,
    backend: str,
    gql: GraphQLClient,
    make_key,
    count_statements: StatementCounter,
    connections: Connections,
    change_lines: ChangeLines,
) -> None:
    service = await make_key("service")
    user = await make_user(runtime, credits_granted=10)
    spent_before = await changes_metric(gql, "credits_consumed")
    counted_before = await changes_metric(gql, "usage_recorded")
    count_statements.reset()
    connections.opened = 0
    change_lines.fields.clear()

    spend = {"userId": str(user.id), "amount": 3, "reason": "ai usage", "idempotencyKey": "s-1"}
    spent = data_of(await gql(CONSUME, {"input": spend}, token=service))["consumeCredits"]
    assert spent == {
        "__typename": "CreditChange",
        "replayed": False,
        "event": {"amount": -3, "balanceAfter": 7},
        "user": {"id": str(user.id)},
    }
    if backend == "postgresql":
        # Before it, the API key's lookup (once per process; cached after) may read alone.
        assert count_statements.statements[-1].startswith(SPEND_CALL)
        assert [s.startswith(SPEND_CALL) for s in count_statements.statements].count(True) == 1
        assert connections.opened <= 1, connections.opened
    else:
        assert connections.opened >= 1

    count_statements.reset()
    connections.opened = 0
    report = {"userId": str(user.id), "feature": "pdf_exports", "quantity": 2}
    counted = data_of(await gql(USAGE, {"input": report}, token=service))["recordUsage"]
    assert counted == {
        "__typename": "EntitlementUsage",
        "replayed": False,
        "quantity": 2,
        "entitlement": {"usage": 2, "remaining": 3},
    }
    if backend == "postgresql":
        assert count_statements.statements == [count_statements.statements[0]]
        assert count_statements.statements[0].startswith(USAGE_CALL)
        assert connections.opened == 0
    else:
        assert count_statements.count > 1 and connections.opened >= 1

    # What a commit owes: the change lines (after it), the metric, and the rows themselves.
    assert change_lines.actions() == ["credits_consumed", "usage_recorded"]
    assert {f["user_id"] for f in change_lines.fields} == {user.id}
    assert await changes_metric(gql, "credits_consumed") == spent_before + 1
    assert await changes_metric(gql, "usage_recorded") == counted_before + 1
    assert await count_rows(runtime, UsageEvent, user.id) == 1
    async with runtime.db.read() as session:
        kinds = await session.scalars(
            select(CreditEvent.kind).where(CreditEvent.user_id == user.id)
        )
        assert sorted(kinds) == ["consume", "grant"]


async def test_a_refusal_changes_nothing_and_logs_nothing(
    runtime: Runtime, gql: GraphQLClient, make_key, change_lines: ChangeLines
) -> None:
    service = await make_key("service")
    user = await make_user(runtime, credits_granted=2)
    change_lines.fields.clear()
    spend = {"userId": str(user.id), "amount": 3, "reason": "ai usage"}
    refused = data_of(await gql(CONSUME, {"input": spend}, token=service))["consumeCredits"]
    assert refused == {"__typename": "InsufficientCredits", "available": 2, "requested": 3}
    report = {"userId": str(user.id), "feature": "pdf_exports", "quantity": 6}
    over = data_of(await gql(USAGE, {"input": report}, token=service))["recordUsage"]
    assert over == {"__typename": "LimitExceeded", "limit": 5, "usage": 0}
    assert change_lines.actions() == []
    assert await count_rows(runtime, UsageEvent, user.id) == 0
    assert await count_rows(runtime, CreditEvent, user.id) == 1  # the grant


async def test_a_retried_key_goes_to_the_rule_which_does_not_ask_the_function_again(
    runtime: Runtime,
    backend: str,
    gql: GraphQLClient,
    make_key,
    count_statements: StatementCounter,
) -> None:
    service = await make_key("service")
    user = await make_user(runtime, credits_granted=10)
    spend = {"userId": str(user.id), "amount": 4, "reason": "ai usage", "idempotencyKey": "r-1"}
    report = {
        "userId": str(user.id),
        "feature": "pdf_exports",
        "quantity": 1,
        "idempotencyKey": "u-1",
    }
    first = data_of(await gql(CONSUME, {"input": spend}, token=service))["consumeCredits"]
    data_of(await gql(USAGE, {"input": report}, token=service))
    count_statements.reset()
    again = data_of(await gql(CONSUME, {"input": spend}, token=service))["consumeCredits"]
    assert again == {**first, "replayed": True}
    counted = data_of(await gql(USAGE, {"input": report}, token=service))["recordUsage"]
    assert counted["replayed"] is True and counted["entitlement"]["usage"] == 1
    calls = [s for s in count_statements.statements if s.startswith((SPEND_CALL, USAGE_CALL))]
    if backend == "postgresql":
        # The function answered 'fallback' for each used key; the rule read the first answers.
        assert [c.startswith(SPEND_CALL) for c in calls] == [True, False]
        assert count_statements.count > 2
    else:
        assert calls == []
    assert await count_rows(runtime, UsageEvent, user.id) == 1
    assert await count_rows(runtime, CreditEvent, user.id) == 2


async def test_with_an_outbox_the_change_commits_in_the_transaction_that_writes_its_rows(
    runtime: Runtime,
    backend: str,
    gql: GraphQLClient,
    make_key,
    count_statements: StatementCounter,
    connections: Connections,
) -> None:
    service = await make_key("service")
    user = await make_user(runtime, credits_granted=10)
    seen: list[tuple[bool, list[str], int]] = []

    async def outbox(session: AsyncSession, changes: list[dict[str, Any]]) -> None:
        # The spend is visible here, uncommitted: the outbox's rows commit with it.
        kinds = await session.scalars(
            select(CreditEvent.kind).where(CreditEvent.user_id == user.id)
        )
        seen.append(
            (
                bool(session.info.get(ONE_TRANSACTION)),
                [c["action"] for c in changes],
                len(list(kinds)),
            )
        )

    runtime.db.before_commit = outbox
    connections.opened = 0
    count_statements.reset()
    spend = {"userId": str(user.id), "amount": 3, "reason": "ai usage"}
    spent = data_of(await gql(CONSUME, {"input": spend}, token=service))["consumeCredits"]
    assert spent["event"] == {"amount": -3, "balanceAfter": 7}
    assert seen == [(True, ["credits_consumed"], 2)]
    assert connections.opened >= 1
    if backend == "postgresql":
        spend_calls = [s for s in count_statements.statements if s.startswith(SPEND_CALL)]
        assert len(spend_calls) == 1, count_statements.statements


async def test_a_spend_alone_recovers_after_the_servers_sessions_are_killed(
    runtime: Runtime, backend: str, database_url: str, connections: Connections
) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has no server sessions to kill")
    user = await make_user(runtime, credits_granted=10)
    ref = UserRef(user_id=user.id)

    async def spend() -> Any:
        now = runtime.clock()
        return await runtime.db.write(
            lambda s: credits.consume_credits(
                s, user=ref, amount=1, reason="ai", actor=AI, now=now, catalog=runtime.catalog
            ),
            lambda statements: credits.consume_credits_alone(
                statements, user=ref, amount=1, reason="ai", actor=AI, now=now
            ),
        )

    assert isinstance(await spend(), credits.CreditChanged)
    assert await kill_server_sessions(database_url) >= 1
    # The dead lent connection may fail one spend (as unavailable), never be lent again.
    connections.opened = 0
    outcomes: list[Any] = []
    for _ in range(3):
        try:
            outcomes.append(await spend())
        except DatabaseUnavailable:
            outcomes.append(None)
    assert all(isinstance(o, credits.CreditChanged) for o in outcomes[1:]), outcomes
    assert connections.opened == 0  # every spend that went through went alone
    spent = 1 + sum(o is not None for o in outcomes)
    assert outcomes[-1].user.credits_available == 10 - spent
    # Counted on a connection of its own: the runtime's pooled sessions were killed too, and
    # the first to be checked out again fails once, as unavailable (no pre-ping).
    events = await _count_events(database_url, user.id)
    assert events == 1 + spent


async def _count_events(database_url: str, user_id: int) -> int:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return await conn.fetchval("SELECT count(*) FROM credit_events WHERE user_id = $1", user_id)
    finally:
        await conn.close()

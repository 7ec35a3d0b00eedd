"""The ledger: grants, spends, burn order, expiry, idempotency, allowance, invariants."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from gateway.runtime import Runtime
from resolvers.errors import IdempotencyConflict, InsufficientCredits, InvalidInput, UserNotFound
from resolvers.ledger import credits, tiers
from resolvers.ledger import entries as ledger
from resolvers.ledger.entries import Actor
from resolvers.models import CreditEvent, CreditGrant, User
from resolvers.users import UserRef
from tests.conftest import StatementCounter
from tests.factories import SUPPORT, make_user

USAGE = Actor(name="ai-backend", source="usage", request_id="req-usage")


async def consume(runtime: Runtime, user: User, amount: int, key: str | None = None, **kw):
    return await runtime.db.write(
        lambda s: credits.consume_credits(
            s,
            user=UserRef(user_id=user.id),
            amount=amount,
            reason=kw.get("reason", "ai usage"),
            actor=USAGE,
            now=runtime.clock(),
            catalog=runtime.catalog,
            idempotency_key=key,
        )
    )


async def grant(runtime: Runtime, user: User, amount: int, key: str | None = None, **kw):
    return await runtime.db.write(
        lambda s: credits.grant_ai_credits(
            s,
            user=UserRef(user_id=user.id),
            amount=amount,
            reason=kw.get("reason", "gift"),
            actor=SUPPORT,
            now=runtime.clock(),
            expires_at=kw.get("expires_at"),
            is_purchased=kw.get("is_purchased", False),
            idempotency_key=key,
        )
    )


async def ledger_state(runtime: Runtime, user_id: int) -> tuple[int, int, int]:
    """(balance on the row, sum of unexpired remaining, sum of ledger events)."""
    now = runtime.clock()
    async with runtime.db.read() as session:
        balance = (
            await session.execute(select(User.credits_available).where(User.id == user_id))
        ).scalar_one()
        remaining = (
            await session.execute(
                select(func.coalesce(func.sum(CreditGrant.remaining), 0)).where(
                    CreditGrant.user_id == user_id,
                    (CreditGrant.expires_at.is_(None)) | (CreditGrant.expires_at > now),
                )
            )
        ).scalar_one()
        ledger = (
            await session.execute(
                select(func.coalesce(func.sum(CreditEvent.amount), 0)).where(
                    CreditEvent.user_id == user_id
                )
            )
        ).scalar_one()
    return balance, remaining, ledger


async def test_grant_then_consume_moves_balance_and_ledger(runtime: Runtime) -> None:
    user = await make_user(runtime)
    granted = await grant(runtime, user, 100)
    assert isinstance(granted, credits.CreditChanged)
    assert granted.event.balance_after == 100
    spent = await consume(runtime, user, 30)
    assert isinstance(spent, credits.CreditChanged)
    assert spent.event.amount == -30
    assert spent.event.balance_after == 70
    assert spent.event.source == "usage"
    assert spent.event.actor == "ai-backend"
    assert spent.event.request_id == "req-usage"
    assert await ledger_state(runtime, user.id) == (70, 70, 70)


async def test_short_balance_is_refused_and_changes_nothing(runtime: Runtime) -> None:
    user = await make_user(runtime, credits_granted=5)
    result = await consume(runtime, user, 6)
    assert result == InsufficientCredits(available=5, requested=6)
    assert await ledger_state(runtime, user.id) == (5, 5, 5)


async def test_unknown_user_and_bad_amounts_are_values(runtime: Runtime) -> None:
    result = await runtime.db.write(
        lambda s: credits.consume_credits(
            s,
            user=UserRef(email="nobody@example.com"),
            amount=1,
            reason="x",
            actor=USAGE,
            now=runtime.clock(),
            catalog=runtime.catalog,
        )
    )
    assert result == UserNotFound(email="nobody@example.com")
    user = await make_user(runtime)
    for amount in (0, -5, ledger.MAX_CREDITS_PER_CHANGE + 1):
        bad = await grant(runtime, user, amount)
        assert isinstance(bad, InvalidInput) and bad.field == "amount"
    assert isinstance(await grant(runtime, user, 1, reason=""), InvalidInput)
    past = await grant(runtime, user, 1, expires_at=runtime.clock() - timedelta(days=1))
    assert isinstance(past, InvalidInput) and past.field == "expiresAt"


async def test_burn_order_soonest_expiry_then_free_then_oldest(runtime: Runtime) -> None:
    user = await make_user(runtime)
    now = runtime.clock()
    never = await grant(runtime, user, 10, reason="no expiry")
    purchased = await grant(
        runtime, user, 10, expires_at=now + timedelta(days=5), is_purchased=True
    )
    free = await grant(runtime, user, 10, expires_at=now + timedelta(days=5))
    soonest = await grant(runtime, user, 10, expires_at=now + timedelta(days=1))
    spent = await consume(runtime, user, 35)
    assert isinstance(spent, credits.CreditChanged)
    order = [gid for gid, _ in spent.event.allocations]
    assert order == [
        soonest.event.grant_id,
        free.event.grant_id,
        purchased.event.grant_id,
        never.event.grant_id,
    ]
    assert [take for _, take in spent.event.allocations] == [10, 10, 10, 5]


async def test_expired_grants_leave_the_balance_through_the_ledger(runtime: Runtime) -> None:
    user = await make_user(runtime, credits_granted=10)
    await grant(runtime, user, 20, expires_at=runtime.clock() + timedelta(hours=1))
    assert await ledger_state(runtime, user.id) == (30, 30, 30)
    before = runtime.clock()
    after = runtime.clock.advance(hours=2)
    # The next change writes the expiry off first; only the unexpired 10 are spendable, and
    # the new month's allowance when those two hours crossed into one.
    new_month = (before.year, before.month) != (after.year, after.month)
    allowance = runtime.catalog.tier("free").monthly_credits if new_month else 0
    spendable = 10 + allowance
    assert await consume(runtime, user, spendable + 1) == InsufficientCredits(
        available=spendable, requested=spendable + 1
    )
    spent = await consume(runtime, user, spendable)
    assert isinstance(spent, credits.CreditChanged)
    assert await ledger_state(runtime, user.id) == (0, 0, 0)
    async with runtime.db.read() as session:
        kinds = (
            (
                await session.execute(
                    select(CreditEvent.kind)
                    .where(CreditEvent.user_id == user.id)
                    .order_by(CreditEvent.id)
                )
            )
            .scalars()
            .all()
        )
    assert kinds == ["grant", "grant", "expire", *(["grant"] if new_month else []), "consume"]


async def test_same_key_same_arguments_replays_without_change(runtime: Runtime) -> None:
    user = await make_user(runtime, credits_granted=10)
    first = await consume(runtime, user, 3, key="k-1")
    again = await consume(runtime, user, 3, key="k-1")
    assert isinstance(again, credits.CreditChanged) and again.replayed
    assert again.event.id == first.event.id
    assert await ledger_state(runtime, user.id) == (7, 7, 7)
    conflict = await consume(runtime, user, 4, key="k-1")
    assert conflict == IdempotencyConflict(idempotency_key="k-1")
    assert await ledger_state(runtime, user.id) == (7, 7, 7)


async def test_monthly_allowance_is_granted_once_and_expires(runtime: Runtime) -> None:
    user = await make_user(runtime, with_allowance=True)
    assert await ledger_state(runtime, user.id) == (50, 50, 50)
    async with runtime.db.read() as session:
        grant_row = (
            await session.execute(select(CreditGrant).where(CreditGrant.user_id == user.id))
        ).scalar_one()
    now = runtime.clock()
    next_month = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    assert grant_row.expires_at == next_month
    for _ in range(2):
        meta = await runtime.db.write(
            lambda s: credits.ensure_plan_metadata(
                s, user, catalog=runtime.catalog, now=runtime.clock(), actor=SUPPORT
            )
        )
        assert meta.get("ai_credits") == 50
    runtime.clock.now = next_month + timedelta(days=1)
    meta = await runtime.db.write(
        lambda s: credits.ensure_plan_metadata(
            s, user, catalog=runtime.catalog, now=runtime.clock(), actor=SUPPORT
        )
    )
    assert meta.tier == "free"
    assert meta.ai_credits == 50
    assert [e["kind"] for e in meta.credit_events] == ["grant", "expire", "grant"]
    assert await ledger_state(runtime, user.id) == (50, 50, 50)


async def test_set_tier_records_history_and_grants_new_allowance(runtime: Runtime) -> None:
    user = await make_user(runtime, with_allowance=True)
    result = await runtime.db.write(
        lambda s: tiers.set_tier(
            s,
            user=UserRef(email=user.email.upper()),
            tier="pro",
            reason="support reset",
            actor=SUPPORT,
            now=runtime.clock(),
            catalog=runtime.catalog,
        )
    )
    assert isinstance(result, tiers.TierSet)
    assert (result.change.from_tier, result.change.to_tier) == ("free", "pro")
    assert result.change.request_id == "req-test"
    assert await ledger_state(runtime, user.id) == (1050, 1050, 1050)
    unknown = await runtime.db.write(
        lambda s: tiers.set_tier(
            s,
            user=UserRef(user_id=user.id),
            tier="platinum",
            reason="x",
            actor=SUPPORT,
            now=runtime.clock(),
            catalog=runtime.catalog,
        )
    )
    assert unknown.code == "UNKNOWN_TIER"


async def test_entitlement_change_is_logged_after_commit_only(runtime: Runtime, caplog) -> None:
    user = await make_user(runtime, credits_granted=2)
    caplog.set_level(logging.INFO, logger="entitlements.changes")
    caplog.clear()
    await consume(runtime, user, 5)
    assert not [r for r in caplog.records if getattr(r, "fields", None)]
    await consume(runtime, user, 2)
    lines = [r.fields for r in caplog.records if getattr(r, "fields", None)]
    assert len(lines) == 1
    line = lines[0]
    assert line["event"] == "entitlement_change"
    assert line["action"] == "credits_consumed"
    assert (line["user_id"], line["amount"], line["balance_after"]) == (user.id, -2, 0)
    assert line["request_id"] == "req-usage"
    from gateway.logs import JsonFormatter

    assert '"event":"entitlement_change"' in JsonFormatter().format(caplog.records[-1])
    json.loads(JsonFormatter().format(caplog.records[-1]))


async def test_a_keyed_no_op_tier_change_spends_its_key(runtime: Runtime) -> None:
    user = await make_user(runtime)

    async def set_tier(tier: str, key: str, reason: str = "support reset"):
        return await runtime.db.write(
            lambda s: tiers.set_tier(
                s, user=UserRef(user_id=user.id), tier=tier, reason=reason, actor=SUPPORT,
                now=runtime.clock(), catalog=runtime.catalog, idempotency_key=key,
            )
        )  # fmt: skip

    first = await set_tier("free", "t-1")  # already free: nothing changes
    assert isinstance(first, tiers.TierSet) and first.change is None
    assert await set_tier("pro", "t-1") == IdempotencyConflict(idempotency_key="t-1")
    again = await set_tier("free", "t-1")
    assert again.replayed and again.change is None and again.user.tier == "free"
    await grant(runtime, user, 5, key="g-1")
    assert await set_tier("pro", "g-1") == IdempotencyConflict(idempotency_key="g-1")


async def test_a_tier_change_key_is_not_free_for_a_credit_change(runtime: Runtime) -> None:
    user = await make_user(runtime, credits_granted=5)
    changed = await runtime.db.write(
        lambda s: tiers.set_tier(
            s, user=UserRef(user_id=user.id), tier="pro", reason="upgrade", actor=SUPPORT,
            now=runtime.clock(), catalog=runtime.catalog, idempotency_key="k-tier",
        )
    )  # fmt: skip
    assert isinstance(changed, tiers.TierSet) and changed.change is not None
    assert await grant(runtime, user, 5, key="k-tier") == IdempotencyConflict(
        idempotency_key="k-tier"
    )
    assert await consume(runtime, user, 1, key="k-tier") == IdempotencyConflict(
        idempotency_key="k-tier"
    )
    assert await ledger_state(runtime, user.id) == (1005, 1005, 1005)


async def test_a_plain_spend_is_one_statement_on_postgresql_and_five_on_sqlite(
    runtime: Runtime, backend: str, count_statements: StatementCounter
) -> None:
    later = runtime.clock() + timedelta(days=3)
    user = await make_user(runtime, credits_granted=4, expires_at=later)
    await runtime.db.write(
        lambda s: credits.grant_ai_credits(
            s,
            user=UserRef(user_id=user.id),
            amount=10,
            reason="gift",
            actor=SUPPORT,
            now=runtime.clock(),
        )
    )
    count_statements.reset()
    result = await consume(runtime, user, 6, key="spend-counted")
    assert isinstance(result, credits.CreditChanged), result
    assert count_statements.count == (1 if backend == "postgresql" else 5), (
        count_statements.statements
    )
    # The soonest grant went first and is empty: the row's next expiry moved past it.
    assert (result.event.balance_after, result.user.credits_available) == (8, 8)
    assert result.user.credits_next_expiry is None
    [first, second] = [a for a in result.event.allocations]
    assert (first[1], second[1]) == (4, 2)
    again = await consume(runtime, user, 6, key="spend-counted")
    assert (again.replayed, again.event.id) == (True, result.event.id)

"""Property: random grants, spends, holds, expiries and tier changes never break the invariants.

A state machine drives one fresh user per example through the real resolvers and the real unit
of work, and keeps a small model of what the balance and each grant should be. After every step
the user row, the unexpired grants, the ledger and the model must all agree.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

from gateway.db import Database
from gateway.runtime import Runtime
from gateway.settings import Settings
from resolvers.catalog.model import Catalog, load_catalog
from resolvers.errors import Failure, HoldExpired, InsufficientCredits
from resolvers.ledger import credits, history, holds, tiers
from resolvers.ledger import entries as ledger
from resolvers.ledger.accounts import lock_account
from resolvers.ledger.allowances import allowance_period
from resolvers.ledger.credits import Actor
from resolvers.models import CreditEvent, CreditGrant, CreditHold, User
from resolvers.users import UserRef
from tests.conftest import Clock
from tests.factories import SUPPORT, make_user

pytestmark = pytest.mark.slow

USAGE = Actor(name="ai-backend", source="usage", request_id="req-property")
CATALOG = load_catalog(Settings().catalog_path)


@dataclass
class ModelGrant:
    amount: int
    remaining: int
    expires_at: datetime | None
    is_purchased: bool
    created_at: datetime
    seq: int


@dataclass
class ModelHold:
    amount: int
    # (index of the grant in Ledger.grants, credits), in the burn order.
    taken: list[tuple[int, int]]
    expires_at: datetime
    status: str = "active"


@dataclass
class Ledger:
    """What the gateway should hold for one user, computed without a database."""

    catalog: Catalog
    tier: str
    allowance_period_start: datetime | None
    grants: list[ModelGrant] = field(default_factory=list)
    # (tier, month) allowances already granted: each is granted at most once.
    allowances: set[tuple[str, datetime]] = field(default_factory=set)
    holds: list[ModelHold] = field(default_factory=list)

    def copy(self) -> Ledger:
        return dataclasses.replace(
            self,
            grants=[dataclasses.replace(g) for g in self.grants],
            allowances=set(self.allowances),
            holds=[dataclasses.replace(h, taken=list(h.taken)) for h in self.holds],
        )

    @property
    def held(self) -> int:
        return sum(h.amount for h in self.holds if h.status == "active")

    def give_back(self, taken: list[tuple[int, int]]) -> None:
        for index, credits_back in taken:
            self.grants[index].remaining += credits_back

    def expire_all(self, now: datetime) -> int:
        """What expire_credits does: run-out holds give their credits back, then grants expire."""
        for hold in self.holds:
            if hold.status == "active" and hold.expires_at <= now:
                hold.status = "expired"
                self.give_back(hold.taken)
        return self.expire(now)

    @property
    def balance(self) -> int:
        return sum(g.remaining for g in self.grants)

    def add(
        self, amount: int, expires_at: datetime | None, now: datetime, is_purchased: bool = False
    ) -> None:
        self.grants.append(
            ModelGrant(amount, amount, expires_at, is_purchased, now, seq=len(self.grants))
        )

    def expire(self, now: datetime) -> int:
        lost = 0
        for grant in self.grants:
            if grant.expires_at is not None and grant.expires_at <= now:
                lost += grant.remaining
                grant.remaining = 0
        return lost

    def grant_allowance(self, now: datetime) -> None:
        start, end = allowance_period(now)
        if self.allowance_period_start == start:
            return
        self.allowance_period_start = start
        monthly = self.catalog.tier(self.tier).monthly_credits
        if monthly > 0 and (self.tier, start) not in self.allowances:
            self.allowances.add((self.tier, start))
            self.add(monthly, end, now)

    def burn(self, amount: int) -> list[tuple[int, int]]:
        def order(g: ModelGrant) -> tuple[object, ...]:
            far = datetime.max.replace(tzinfo=UTC)
            return (g.expires_at or far, g.is_purchased, g.created_at, g.seq)

        taken = []
        for grant in sorted((g for g in self.grants if g.remaining), key=order):
            take = min(amount, grant.remaining)
            grant.remaining -= take
            amount -= take
            taken.append((grant.seq, take))
            if not amount:
                return taken
        raise AssertionError("the model burnt more than it held")


class LedgerMachine(RuleBasedStateMachine):
    database_url: str  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        # The suite's clock (under --start-at, a month's or a year's last minutes).
        start = datetime.now(UTC).replace(microsecond=0)
        self.clock = Clock(start)
        self.runtime = Runtime(
            settings=Settings(database_url=self.database_url),
            db=Database(self.database_url, pool_size=2),
            catalog=CATALOG,
            clock=self.clock,
        )
        # make_user marks this month's allowance as handled without granting it.
        self.user = self.run(make_user(self.runtime))
        self.model = Ledger(
            catalog=CATALOG, tier=self.user.tier, allowance_period_start=allowance_period(start)[0]
        )
        # (how it was sent, key, arguments, event id) of each keyed change that went through.
        self.keyed_changes: list[tuple[Any, str, dict[str, Any], int]] = []
        # The database id of each hold in self.model.holds, in the same order.
        self.hold_ids: list[int] = []
        # (available, held) as the model says it stood at each instant a step ran.
        self.history: dict[datetime, tuple[int, int]] = {}

    def run(self, coro):
        return self.runner.run(coro)

    def teardown(self) -> None:
        try:
            self.run(self.runtime.close())
        finally:
            self.runner.close()

    def write(self, work):
        return self.run(self.runtime.db.write(work))

    def send_grant(self, now: datetime, key: str | None, **args: Any) -> Any:
        return self.write(
            lambda s: credits.grant_ai_credits(
                s,
                user=UserRef(user_id=self.user.id),
                reason="property grant",
                actor=SUPPORT,
                now=now,
                idempotency_key=key,
                **args,
            )
        )

    def send_spend(self, now: datetime, key: str | None, **args: Any) -> Any:
        return self.write(
            lambda s: credits.consume_credits(
                s,
                user=UserRef(user_id=self.user.id),
                reason="property spend",
                actor=USAGE,
                now=now,
                catalog=CATALOG,
                idempotency_key=key,
                **args,
            )
        )

    @rule(
        amount=st.integers(1, 400),
        expires_in_hours=st.none() | st.integers(1, 24 * 45),
        is_purchased=st.booleans(),
        keyed=st.booleans(),
    )
    def grant(
        self, amount: int, expires_in_hours: int | None, is_purchased: bool, keyed: bool
    ) -> None:
        now = self.clock()
        expires_at = None if expires_in_hours is None else now + timedelta(hours=expires_in_hours)
        args = {"amount": amount, "expires_at": expires_at, "is_purchased": is_purchased}
        key = f"grant-{uuid.uuid4().hex}" if keyed else None
        result = self.send_grant(now, key, **args)
        assert isinstance(result, credits.CreditChanged), result
        self.model.expire_all(now)
        self.model.add(amount, expires_at, now, is_purchased)
        assert result.event.balance_after == self.model.balance + self.model.held
        if key is not None:
            self.keyed_changes.append((self.send_grant, key, args, result.event.id))

    def consume_and_check(self, amount: int, key: str | None = None) -> None:
        now = self.clock()
        expected = self.model.copy()
        expected.expire_all(now)
        expected.grant_allowance(now)
        result = self.send_spend(now, key, amount=amount)
        if expected.balance < amount:
            # A refused spend rolls back everything, the expiry and allowance it wrote included.
            assert result == InsufficientCredits(available=expected.balance, requested=amount)
            return
        assert isinstance(result, credits.CreditChanged), result
        expected.burn(amount)
        self.model = expected
        assert result.event.amount == -amount
        assert result.event.balance_after == self.model.balance + self.model.held
        if key is not None:
            self.keyed_changes.append((self.send_spend, key, {"amount": amount}, result.event.id))

    @rule(amount=st.integers(1, 600), keyed=st.booleans())
    def consume(self, amount: int, keyed: bool) -> None:
        self.consume_and_check(amount, key=f"spend-{uuid.uuid4().hex}" if keyed else None)

    @precondition(lambda self: self.keyed_changes)
    @rule(data=st.data())
    def retry_a_keyed_change(self, data: st.DataObject) -> None:
        send, key, args, event_id = data.draw(st.sampled_from(self.keyed_changes))
        result = send(self.clock(), key, **args)
        # A retry answers the first result and changes nothing, however much time has passed.
        assert isinstance(result, credits.CreditChanged), result
        assert (result.replayed, result.event.id) == (True, event_id)

    @precondition(lambda self: self.model.balance < ledger.MAX_CREDITS_PER_CHANGE)
    @rule()
    def consume_one_more_than_available(self) -> None:
        trial = self.model.copy()
        trial.expire_all(self.clock())
        trial.grant_allowance(self.clock())
        self.consume_and_check(trial.balance + 1)

    @rule(
        hours=st.integers(1, 24 * 40),
        sweep=st.sampled_from(["ensure_plan_metadata", "expire_credits"]),
    )
    def advance_clock_then_sweep(self, hours: int, sweep: str) -> None:
        now = self.clock.advance(hours=hours)
        if sweep == "ensure_plan_metadata":
            meta = self.write(
                lambda s: credits.ensure_plan_metadata(
                    s, self.user, catalog=CATALOG, now=now, actor=SUPPORT
                )
            )
            self.model.expire_all(now)
            self.model.grant_allowance(now)
            assert meta.ai_credits == self.model.balance
            assert meta.tier == self.model.tier
            return

        async def expire(session):
            row = await lock_account(session, UserRef(user_id=self.user.id))
            return await credits.expire_credits(session, row, now=now, actor=SUPPORT)

        assert self.write(expire) == self.model.expire_all(now)

    @rule(amount=st.integers(1, 300), ttl=st.integers(60, 86_400), keyed=st.booleans())
    def reserve(self, amount: int, ttl: int, keyed: bool) -> None:
        now = self.clock()
        expected = self.model.copy()
        expected.expire_all(now)
        expected.grant_allowance(now)
        key = f"reserve-{uuid.uuid4().hex}" if keyed else None
        result = self.write(
            lambda s: holds.reserve_credits(
                s,
                user=UserRef(user_id=self.user.id),
                amount=amount,
                reason="property hold",
                actor=USAGE,
                now=now,
                catalog=CATALOG,
                ttl_seconds=ttl,
                idempotency_key=key,
            )
        )
        if expected.balance < amount:
            assert result == InsufficientCredits(available=expected.balance, requested=amount)
            return
        assert isinstance(result, holds.HoldChanged), result
        taken = expected.burn(amount)
        expected.holds.append(ModelHold(amount, taken, now + timedelta(seconds=ttl)))
        self.model = expected
        self.hold_ids.append(result.hold.id)
        assert result.event.balance_after == self.model.balance + self.model.held

    @precondition(lambda self: self.hold_ids)
    @rule(data=st.data(), settle=st.booleans())
    def settle_or_release(self, data: st.DataObject, settle: bool) -> None:
        index = data.draw(st.integers(0, len(self.hold_ids) - 1))
        hold_id, hold = self.hold_ids[index], self.model.holds[index]
        now = self.clock()
        amount = data.draw(st.integers(0, hold.amount)) if settle else 0
        if settle:
            result = self.write(
                lambda s: holds.settle_hold(s, hold_id=hold_id, amount=amount, actor=USAGE, now=now)
            )
        else:
            result = self.write(
                lambda s: holds.release_hold(s, hold_id=hold_id, actor=USAGE, now=now)
            )
        if hold.status != "active":
            assert result.status == hold.status, result
            return
        if hold.expires_at <= now:
            if settle:
                assert isinstance(result, HoldExpired), result
            else:
                assert result.status == "expired", result
            return
        assert not isinstance(result, Failure), result
        expected = self.model.copy()
        expected.expire_all(now)
        target = expected.holds[index]
        target.status = "settled" if settle else "released"
        left = amount
        for grant_index, credits_held in target.taken:
            paid = min(left, credits_held)
            left -= paid
            expected.grants[grant_index].remaining += credits_held - paid
        expected.expire(now)
        self.model = expected

    @rule(tier=st.sampled_from(CATALOG.tier_codes))
    def set_tier(self, tier: str) -> None:
        now = self.clock()
        result = self.write(
            lambda s: tiers.set_tier(
                s,
                user=UserRef(user_id=self.user.id),
                tier=tier,
                reason="property tier change",
                actor=SUPPORT,
                now=now,
                catalog=CATALOG,
            )
        )
        assert isinstance(result, tiers.TierSet), result
        if tier == self.model.tier:
            assert result.change is None
            return
        assert (result.change.from_tier, result.change.to_tier) == (self.model.tier, tier)
        self.model.tier = tier
        self.model.allowance_period_start = None
        self.model.expire_all(now)
        self.model.grant_allowance(now)

    @invariant()
    def ledger_agrees_with_itself_and_the_model(self) -> None:
        now = self.clock()

        async def read():
            async with self.runtime.db.read() as session:
                user = await session.get(User, self.user.id)
                grants = (
                    await session.execute(
                        select(CreditGrant)
                        .where(CreditGrant.user_id == self.user.id)
                        .order_by(CreditGrant.id)
                    )
                ).scalars()
                events = (
                    await session.execute(
                        select(CreditEvent.amount, CreditEvent.balance_after)
                        .where(CreditEvent.user_id == self.user.id)
                        .order_by(CreditEvent.id)
                    )
                ).all()
                held = (
                    await session.scalars(
                        select(CreditHold.amount).where(
                            CreditHold.user_id == self.user.id, CreditHold.status == "active"
                        )
                    )
                ).all()
                return user, list(grants), events, sum(held)

        user, grants, events, held = self.run(read())
        unexpired = sum(g.remaining for g in grants if g.expires_at is None or g.expires_at > now)
        ledger = sum(amount for amount, _ in events)
        assert user.credits_available >= 0 and user.credits_held >= 0
        assert user.credits_available == unexpired == self.model.balance
        # What the user owns: available and held; held credits are on the holds, off the grants.
        assert user.credits_held == held == self.model.held
        assert user.credits_available + user.credits_held == ledger
        assert user.tier == self.model.tier
        # Every event's balance_after is the running sum: the history explains the balance.
        running = 0
        for amount, balance_after in events:
            running += amount
            assert balance_after == running
        assert [(g.amount, g.remaining, g.expires_at, g.is_purchased) for g in grants] == [
            (g.amount, g.remaining, g.expires_at, g.is_purchased) for g in self.model.grants
        ]

    @invariant()
    def credits_at_a_past_step_is_the_balance_the_model_had_then(self) -> None:
        now = self.clock()
        # What a read sees now: holds and grants that ran out count as expired, written or not.
        seen = self.model.copy()
        seen.expire_all(now)
        self.history[now] = (seen.balance, seen.held)
        times = sorted(self.history)
        # Now, the first step, and one in between: every instant each time would be too slow.
        for moment in {times[0], times[len(times) // 2], now}:

            async def read(at: datetime = moment) -> history.BalanceAt:
                async with self.runtime.db.read() as session:
                    return await history.balance_at(session, self.user.id, at)

            past = self.run(read())
            assert (past.available, past.held) == self.history[moment], moment


def test_random_ledger_histories_keep_every_invariant(database_url: str) -> None:
    LedgerMachine.database_url = database_url
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            # Examples share the test's database (a fresh user each); nothing to store between runs.
            database=None,
        ),
    )


async def test_a_keyed_grant_replays_even_after_its_credits_expired(runtime: Runtime) -> None:
    """The shortest history the machine above can shrink a replay bug to, kept as an example."""
    user = await make_user(runtime)
    expires_at = runtime.clock() + timedelta(hours=1)

    def send():
        return runtime.db.write(
            lambda s: credits.grant_ai_credits(
                s,
                user=UserRef(user_id=user.id),
                amount=5,
                reason="goodwill",
                actor=SUPPORT,
                now=runtime.clock(),
                expires_at=expires_at,
                idempotency_key="ticket-12",
            )
        )

    first = await send()
    runtime.clock.advance(hours=2)
    retry = await send()
    assert isinstance(retry, credits.CreditChanged), retry
    assert (retry.replayed, retry.event.id) == (True, first.event.id)

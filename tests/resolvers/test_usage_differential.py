"""Differential: the usage rule lives twice (the `record_usage` function, and Python).

One state machine sends the same random usage reports (positive, give-backs, over the limit,
retried and conflicting keys), tier changes, overrides, subscriptions and clock moves (across
month and billing-period boundaries, and back, as a process whose clock is behind would) to two
users of one PostgreSQL database: the first through record_usage (the function, falling back to
the rule), the second through the Python rule alone. Answers, stored usage and usage records
must be identical after every step. Ids and keys differ between the two users, so keys carry
the user's side and fingerprints are compared by what they digest.
"""

from __future__ import annotations

import asyncio
import calendar
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

from gateway.db import Database
from gateway.runtime import Runtime
from gateway.settings import Settings
from resolvers.catalog.model import load_catalog
from resolvers.entitlements import overrides, usage
from resolvers.entitlements.periods import usage_period
from resolvers.errors import Failure
from resolvers.ledger import credits, tiers
from resolvers.ledger.accounts import lock_account, save_account
from resolvers.ledger.entries import Actor
from resolvers.ledger.idempotency import fingerprint
from resolvers.models import UsageEvent, User
from resolvers.users import UserRef
from tests.conftest import Clock, StatementCounter
from tests.factories import SUPPORT, make_user

pytestmark = pytest.mark.slow

AI_BACKEND = Actor(name="ai-backend", source="usage", request_id="req-usage-differential")
CATALOG = load_catalog(Settings().catalog_path)
FEATURES = list(CATALOG.features)
SIDES = ("sql", "rule")
STATUSES = ["active", "trialing", "past_due", "canceled", "paused", None]


class TwinUsage(RuleBasedStateMachine):
    url: ClassVar[str]
    # Across all examples: how many reports the function answered alone, and how many it
    # handed to the rule. The test requires both, or the comparison proves nothing.
    answered_in_sql: ClassVar[int] = 0
    handed_over: ClassVar[int] = 0
    # Of those, the reports sent as recordUsage sends them (before any session).
    alone_answered: ClassVar[int] = 0
    alone_handed_over: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.clock = Clock(datetime.now(UTC).replace(microsecond=0))
        self.runtime = Runtime(
            settings=Settings(database_url=self.url),
            db=Database(self.url, pool_size=2),
            catalog=CATALOG,
            clock=self.clock,
        )
        self.counter = StatementCounter(self.runtime.db)
        self.user_ids = [self.runner.run(make_user(self.runtime)).id for _ in SIDES]
        self.run_id = uuid.uuid4().hex[:12]
        # Keyed changes sent, to retry and to reuse: (kind, key stem, arguments).
        self.keyed: list[tuple[str, str, dict[str, Any]]] = []
        # (feature, quantity) of every report, to read fingerprints back.
        self.asked: set[tuple[str, int]] = set()
        self.reports = 0

    def teardown(self) -> None:
        try:
            self.counter.close()
            self.runner.run(self.runtime.close())
        finally:
            self.runner.close()

    def key(self, side: int, stem: str | None) -> str | None:
        return None if stem is None else f"{stem}-{self.run_id}-{SIDES[side]}"

    def plain(self, key: str | None) -> str | None:
        """A key without its side, so the two users' keys compare."""
        for side in SIDES:
            if key is not None and key.endswith(f"-{self.run_id}-{side}"):
                return key.removesuffix(f"-{self.run_id}-{side}")
        return key

    def on_both(self, work: Any) -> list[Any]:
        return [self.runner.run(self.runtime.db.write(work(side))) for side in range(2)]

    def report(self, feature: str, quantity: int, stem: str | None) -> None:
        """One usage report to each user, the first by record_usage, the second by the rule.

        Every other report the first goes as recordUsage sends it: tried as one statement before
        any session, then (handed over) by record_usage in a transaction. Alternated rather than
        drawn: hypothesis draws booleans of one example alike, and some runs then sent almost
        none alone."""
        self.reports += 1
        alone = self.reports % 2 == 0
        self.asked.add((feature, quantity))
        answers = []
        for side, send in enumerate((usage.record_usage, usage.record_usage_by_rule)):
            now = self.clock()
            self.counter.reset()
            arguments = {
                "user": UserRef(user_id=self.user_ids[side]),
                "feature": feature,
                "quantity": quantity,
                "actor": AI_BACKEND,
                "now": now,
                "catalog": CATALOG,
                "idempotency_key": self.key(side, stem),
            }
            first = None
            if alone and side == 0:
                first = partial(usage.record_usage_alone, **arguments)
            result = self.runner.run(self.runtime.db.write(partial(send, **arguments), first))
            if side == 0:
                statements = self.counter.statements
                assert statements[0].startswith("SELECT * FROM record_usage("), statements
                # Handed over, the rule does not ask the function again.
                assert sum(s.startswith("SELECT * FROM record_usage(") for s in statements) == 1
                if len(statements) == 1:
                    TwinUsage.answered_in_sql += 1
                    TwinUsage.alone_answered += alone
                else:
                    TwinUsage.handed_over += 1
                    TwinUsage.alone_handed_over += alone
            answers.append(self.describe(result))
        assert answers[0] == answers[1], (feature, quantity, stem, answers)

    def describe(self, result: Any) -> Any:
        if isinstance(result, Failure):
            fields = dataclasses.asdict(result)
            if "idempotency_key" in fields:
                fields["idempotency_key"] = self.plain(fields["idempotency_key"])
            return (type(result).__name__, fields)
        assert isinstance(result, usage.UsageRecorded), result
        event = result.event
        return (
            "recorded",
            result.replayed,
            result.entitlement,
            result.user.entitlement_usage,
            result.user.updated_at,
            result.user.tier,
            (event.feature, event.period, event.quantity, event.used_after, event.created_at),
            (event.source, event.actor, event.request_id, self.plain(event.idempotency_key)),
        )

    def change_row(self, **columns: Any) -> None:
        """Set columns of both users' rows, as Stripe's handlers or old data would have."""

        def work(side: int) -> Any:
            async def change(session):
                account = await lock_account(session, UserRef(user_id=self.user_ids[side]))
                for name, value in columns.items():
                    setattr(account, name, value)
                await save_account(session, account)

            return change

        self.on_both(work)

    # --- rules ------------------------------------------------------------------------------

    @initialize()
    def first_reports(self) -> None:
        """Every example starts with two reports the function answers (a fresh user on the
        free tier, no override, a new key) and two it hands over (the key again), one of each
        alone. Overrides and tier changes drawn early hand every later report over, and runs
        drawn that way left the function's own answers almost unexercised."""
        stem = f"first-{uuid.uuid4().hex[:8]}"
        self.keyed.append(("usage", stem, {"feature": "projects", "quantity": 1}))
        self.report("projects", 1, stem)
        self.report("projects", 1, None)
        self.report("projects", 1, stem)
        self.report("projects", 1, stem)

    @rule(
        feature=st.sampled_from(FEATURES),
        quantity=st.integers(-6, 8).filter(bool) | st.integers(90, 1200),
        keyed=st.booleans(),
    )
    def record(self, feature: str, quantity: int, keyed: bool) -> None:
        stem = f"use-{uuid.uuid4().hex[:8]}" if keyed else None
        if stem is not None:
            self.keyed.append(("usage", stem, {"feature": feature, "quantity": quantity}))
        self.report(feature, quantity, stem)

    @precondition(lambda self: self.keyed)
    @rule(data=st.data(), other_quantity=st.booleans())
    def reuse_a_key(self, data: st.DataObject, other_quantity: bool) -> None:
        kind, stem, args = data.draw(st.sampled_from(self.keyed))
        if kind != "usage":
            args = {"feature": data.draw(st.sampled_from(FEATURES)), "quantity": 1}
        elif other_quantity:
            args = {**args, "quantity": args["quantity"] + 1 or 1}
        self.report(args["feature"], args["quantity"], stem)

    @rule(amount=st.integers(1, 50))
    def grant_with_a_key(self, amount: int) -> None:
        stem = f"grant-{uuid.uuid4().hex[:8]}"
        self.keyed.append(("grant", stem, {}))
        now = self.clock()
        self.on_both(
            lambda side: (
                lambda s: credits.grant_ai_credits(
                    s,
                    user=UserRef(user_id=self.user_ids[side]),
                    amount=amount,
                    reason="gift",
                    actor=SUPPORT,
                    now=now,
                    idempotency_key=self.key(side, stem),
                )
            )
        )

    @rule(tier=st.sampled_from(CATALOG.tier_codes))
    def set_tier(self, tier: str) -> None:
        now = self.clock()
        self.on_both(
            lambda side: (
                lambda s: tiers.set_tier(
                    s,
                    user=UserRef(user_id=self.user_ids[side]),
                    tier=tier,
                    reason="support",
                    actor=SUPPORT,
                    now=now,
                    catalog=CATALOG,
                )
            )
        )

    @rule()
    def a_tier_the_catalog_no_longer_has(self) -> None:
        self.change_row(tier="legacy")

    @rule(
        feature=st.sampled_from(FEATURES),
        has_access=st.booleans(),
        limit=st.none() | st.integers(0, 10),
        expires_in_hours=st.none() | st.integers(1, 24 * 10),
    )
    def override(
        self, feature: str, has_access: bool, limit: int | None, expires_in_hours: int | None
    ) -> None:
        now = self.clock()
        expires = None if expires_in_hours is None else now + timedelta(hours=expires_in_hours)
        answers = self.on_both(
            lambda side: (
                lambda s: overrides.set_entitlement_override(
                    s,
                    user=UserRef(user_id=self.user_ids[side]),
                    feature=feature,
                    has_access=has_access,
                    limit=limit if has_access else None,
                    reason="support",
                    actor=SUPPORT,
                    now=now,
                    catalog=CATALOG,
                    expires_at=expires,
                )
            )
        )
        assert all(isinstance(a, overrides.OverrideSet) for a in answers), answers

    @rule(
        status=st.sampled_from(STATUSES),
        days=st.integers(-70, 70),
        on_a_month_end=st.booleans(),
        microsecond=st.sampled_from([0, 250_000]),
    )
    def subscribe(self, status: str | None, days: int, on_a_month_end: bool, microsecond: int):
        end = self.clock() + timedelta(days=days, hours=days % 7, minutes=days % 13)
        if on_a_month_end:
            # A 31st (or the end of a shorter month): Stripe keeps the anchor at the month's end.
            end = end.replace(day=calendar.monthrange(end.year, end.month)[1])
        self.change_row(
            stripe_subscription_id=f"sub_{self.run_id}",
            subscription_status=status,
            subscription_period_end=end.replace(microsecond=microsecond),
        )

    @rule()
    def unsubscribe(self) -> None:
        self.change_row(stripe_subscription_id=None, subscription_status=None)

    @rule(hours=st.integers(1, 24 * 40))
    def advance_clock(self, hours: int) -> None:
        self.clock.advance(hours=hours)

    @rule(hours=st.integers(1, 72))
    def fall_behind(self, hours: int) -> None:
        # Another process whose clock is behind: a newer stored period must be kept.
        self.clock.advance(hours=-hours)

    @rule(seconds=st.integers(-2, 2), months=st.integers(0, 2))
    def to_a_month_boundary(self, seconds: int, months: int) -> None:
        now = self.clock()
        index = now.month - 1 + months + 1
        start = datetime(now.year + index // 12, index % 12 + 1, 1, tzinfo=UTC)
        self.clock.now = start + timedelta(seconds=seconds)

    @rule(seconds=st.integers(-2, 2))
    def to_the_billing_period_end(self, seconds: int) -> None:
        row = self.runner.run(self.rows(0))[0]
        if row.subscription_period_end is not None:
            self.clock.now = row.subscription_period_end + timedelta(seconds=seconds)

    @rule(
        seconds=st.integers(0, 3600),
        behind=st.integers(1, 3600),
        quantities=st.tuples(st.integers(-2, 4).filter(bool), st.integers(-2, 4).filter(bool)),
    )
    def across_a_period_boundary(
        self, seconds: int, behind: int, quantities: tuple[int, int]
    ) -> None:
        """A report just after the next period begins, then one from a clock just behind it."""
        row = self.runner.run(self.rows(0))[0]
        boundary = usage_period(row, self.clock())[1]
        self.clock.now = boundary + timedelta(seconds=seconds)
        self.report("pdf_exports", quantities[0], None)
        self.clock.now = boundary - timedelta(seconds=behind)
        self.report("pdf_exports", quantities[1], None)

    async def rows(self, side: int) -> tuple[User, list[UsageEvent]]:
        async with self.runtime.db.read() as session:
            user = await session.get(User, self.user_ids[side])
            events = list(
                await session.scalars(
                    select(UsageEvent)
                    .where(UsageEvent.user_id == self.user_ids[side])
                    .order_by(UsageEvent.id)
                )
            )
        return user, events

    @invariant()
    def both_users_have_the_same_usage_and_records(self) -> None:
        seen = []
        for side in range(2):
            user, events = self.runner.run(self.rows(side))
            digests = {
                fingerprint("usage", user=user.id, feature=f, quantity=q): (f, q)
                for f, q in self.asked
            }
            seen.append(
                (
                    user.entitlement_usage,
                    user.updated_at,
                    [
                        (
                            *(e.feature, e.period, e.quantity, e.used_after, e.created_at),
                            *(e.source, e.actor, e.request_id, self.plain(e.idempotency_key)),
                            digests[e.fingerprint],
                        )
                        for e in events
                    ],
                )
            )
        assert seen[0] == seen[1]


def test_usage_counted_in_sql_and_in_python_is_identical(postgres_database: str) -> None:
    TwinUsage.url = postgres_database
    TwinUsage.answered_in_sql = TwinUsage.handed_over = 0
    TwinUsage.alone_answered = TwinUsage.alone_handed_over = 0
    run_state_machine_as_test(
        TwinUsage,
        settings=settings(max_examples=30, stateful_step_count=40, deadline=None, database=None),
    )
    # The comparison covered both the function's own answers and its hand-overs.
    assert TwinUsage.answered_in_sql >= 50, TwinUsage.answered_in_sql
    assert TwinUsage.handed_over >= 10, TwinUsage.handed_over
    # And about half of each as recordUsage sends them, alone first.
    assert TwinUsage.alone_answered >= 10, TwinUsage.alone_answered
    assert TwinUsage.alone_handed_over >= 3, TwinUsage.alone_handed_over

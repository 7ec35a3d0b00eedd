"""Differential: the spend rule lives twice (SQL function on PostgreSQL, Python on SQLite).

One state machine sends the same random grants, spends, retries, expiries, tier changes, pack
purchases and take-backs to a user on each database, and requires identical answers, balances,
grants and ledgers after every step. Ids differ between the databases, so grants and payments
are compared by their order of creation.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
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
from resolvers.billing import payments
from resolvers.catalog.model import load_catalog
from resolvers.errors import Failure
from resolvers.ledger import credits, tiers
from resolvers.ledger.accounts import lock_account
from resolvers.ledger.entries import Actor
from resolvers.models import CreditEvent, CreditGrant, Payment, User
from resolvers.users import UserRef
from tests.conftest import Clock
from tests.factories import SUPPORT, make_user

pytestmark = pytest.mark.slow

USAGE = Actor(name="ai-backend", source="usage", request_id="req-differential")
STRIPE = Actor(name="stripe:evt_differential", source="stripe", request_id="req-differential")
CATALOG = load_catalog(Settings().catalog_path)


class TwinLedgers(RuleBasedStateMachine):
    urls: tuple[str, ...]  # set by the test: SQLite first, then PostgreSQL

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.clock = Clock(datetime.now(UTC).replace(microsecond=0))
        self.sides = [
            Runtime(
                settings=Settings(database_url=url),
                db=Database(url, pool_size=2),
                catalog=CATALOG,
                clock=self.clock,
            )
            for url in self.urls
        ]
        # A bystander on one side only, so the twins' ids differ: nothing may depend on them.
        self.runner.run(make_user(self.sides[1]))
        self.user_ids = [self.runner.run(make_user(side)).id for side in self.sides]
        self.payments: list[list[int]] = [[] for _ in self.sides]
        # (what was sent, its arguments) of keyed changes, to retry and to reuse keys.
        self.keyed: list[tuple[str, dict[str, Any]]] = []

    def teardown(self) -> None:
        try:
            for side in self.sides:
                self.runner.run(side.close())
        finally:
            self.runner.close()

    def both(self, send: str, *, alone: bool = False, **args: Any) -> None:
        """Send one change to each database; the answers must be the same.

        `alone`: a spend goes as consumeCredits sends it, tried as one statement before any
        session (PostgreSQL without an outbox; SQLite's unit of work ignores it)."""
        now = self.clock()
        answers = []
        for index, side in enumerate(self.sides):
            work = getattr(self, f"_{send}")(index, now, **args)
            first = self._consume_alone(index, now, **args) if alone else None
            result = self.runner.run(side.db.write(work, first))
            answers.append(self.runner.run(self._describe(index, result)))
        assert answers[0] == answers[1], (send, args, answers)

    def _grant(self, index: int, now: datetime, **args: Any) -> Any:
        return lambda s: credits.grant_ai_credits(
            s, user=UserRef(user_id=self.user_ids[index]), actor=SUPPORT, now=now, **args
        )

    def _consume(self, index: int, now: datetime, **args: Any) -> Any:
        return lambda s: credits.consume_credits(
            s,
            user=UserRef(user_id=self.user_ids[index]),
            actor=USAGE,
            now=now,
            catalog=CATALOG,
            **args,
        )

    def _consume_alone(self, index: int, now: datetime, **args: Any) -> Any:
        return lambda statements: credits.consume_credits_alone(
            statements, user=UserRef(user_id=self.user_ids[index]), actor=USAGE, now=now, **args
        )

    def _set_tier(self, index: int, now: datetime, **args: Any) -> Any:
        return lambda s: tiers.set_tier(
            s,
            user=UserRef(user_id=self.user_ids[index]),
            actor=SUPPORT,
            now=now,
            catalog=CATALOG,
            **args,
        )

    def _buy(self, index: int, now: datetime, *, pack: str, checkout: str) -> Any:
        async def work(s):
            # As the webhook's handler does: the buyer is locked once, then handed down.
            account = await lock_account(s, UserRef(user_id=self.user_ids[index]))
            result = await payments.record_credit_pack_purchase(
                s,
                account=account,
                checkout_session_id=checkout,
                pack=CATALOG.credit_pack(pack),
                amount=1000,
                currency="eur",
                payment_intent_id=None,
                actor=STRIPE,
                now=now,
            )
            if isinstance(result, payments.PaymentRecorded) and result.created:
                self.payments[index].append(result.payment.id)
            return result

        return work

    def _take_back(self, index: int, now: datetime, *, payment: int, amount: int) -> Any:
        return lambda s: credits.revoke_payment_credits(
            s,
            user=UserRef(user_id=self.user_ids[index]),
            payment_id=self.payments[index][payment],
            amount=amount,
            reason="refund",
            actor=STRIPE,
            now=now,
        )

    async def _describe(self, index: int, result: Any) -> Any:
        """An answer with ids replaced by creation order, so the two databases compare."""
        if isinstance(result, Failure):
            return result
        grants, _, _ = await self._rows(index)
        order = {grant.id: n for n, grant in enumerate(grants)}

        def event(e: Any) -> Any:
            if e is None:
                return None
            allocations = [(order[g], n) for g, n in e.allocations or []]
            return (e.kind, e.amount, e.balance_after, e.reason, allocations, e.created_at)

        if isinstance(result, credits.CreditChanged):
            user = result.user
            return ("credits", result.replayed, event(result.event), user.credits_available)
        if isinstance(result, credits.CreditsRevoked):
            return ("revoked", result.revoked, result.unrecovered, event(result.event))
        if isinstance(result, tiers.TierSet):
            change = result.change and (result.change.from_tier, result.change.to_tier)
            return ("tier", change, result.replayed, result.user.credits_available)
        if isinstance(result, payments.PaymentRecorded):
            return ("payment", result.created, [event(e) for e in result.grant_events])
        raise AssertionError(f"unexpected answer {result!r}")

    async def _rows(self, index: int) -> tuple[list[Any], list[Any], list[int]]:
        user_id = self.user_ids[index]
        async with self.sides[index].db.read() as session:
            grants = list(
                await session.scalars(
                    select(CreditGrant).where(CreditGrant.user_id == user_id).order_by("id")
                )
            )
            events = list(
                await session.scalars(
                    select(CreditEvent).where(CreditEvent.user_id == user_id).order_by("id")
                )
            )
            paid = list(
                await session.scalars(
                    select(Payment.id).where(Payment.user_id == user_id).order_by("id")
                )
            )
        return grants, events, paid

    def _key(self, index: int, key: str | None) -> str | None:
        # Allowance keys name the user, whose id differs between the two databases.
        own = f"allowance:{self.user_ids[index]}:"
        return key.replace(own, "allowance:<user>:") if key else key

    # --- rules ------------------------------------------------------------------------------

    @rule(
        amount=st.integers(1, 400),
        expires_in_hours=st.none() | st.integers(1, 24 * 45),
        is_purchased=st.booleans(),
        keyed=st.booleans(),
    )
    def grant(
        self, amount: int, expires_in_hours: int | None, is_purchased: bool, keyed: bool
    ) -> None:
        hours = expires_in_hours
        expires = None if hours is None else self.clock() + timedelta(hours=hours)
        args = {
            "amount": amount,
            "reason": "gift",
            "expires_at": expires,
            "is_purchased": is_purchased,
        }
        if keyed:
            args["idempotency_key"] = f"grant-{uuid.uuid4().hex}"
            self.keyed.append(("grant", args))
        self.both("grant", **args)

    @rule(amount=st.integers(1, 500), keyed=st.booleans(), alone=st.booleans())
    def consume(self, amount: int, keyed: bool, alone: bool) -> None:
        args: dict[str, Any] = {"amount": amount, "reason": "ai usage"}
        if keyed:
            args["idempotency_key"] = f"spend-{uuid.uuid4().hex}"
            self.keyed.append(("consume", args))
        self.both("consume", alone=alone, **args)

    @precondition(lambda self: self.keyed)
    @rule(data=st.data(), other_arguments=st.booleans(), alone=st.booleans())
    def reuse_a_key(self, data: st.DataObject, other_arguments: bool, alone: bool) -> None:
        send, args = data.draw(st.sampled_from(self.keyed))
        if other_arguments:
            args = {**args, "reason": "other reason"}
        self.both(send, alone=alone and send == "consume", **args)

    @rule(hours=st.integers(1, 24 * 40))
    def advance_clock(self, hours: int) -> None:
        self.clock.advance(hours=hours)

    @rule(tier=st.sampled_from(CATALOG.tier_codes), keyed=st.booleans())
    def set_tier(self, tier: str, keyed: bool) -> None:
        args: dict[str, Any] = {"tier": tier, "reason": "support"}
        if keyed:
            args["idempotency_key"] = f"tier-{uuid.uuid4().hex}"
        self.both("set_tier", **args)

    @rule(pack=st.sampled_from([p.code for p in CATALOG.credit_packs]))
    def buy_a_pack(self, pack: str) -> None:
        self.both("buy", pack=pack, checkout=f"cs_{uuid.uuid4().hex}")

    @precondition(lambda self: self.payments[0])
    @rule(data=st.data(), amount=st.integers(1, 600))
    def take_back(self, data: st.DataObject, amount: int) -> None:
        payment = data.draw(st.integers(0, len(self.payments[0]) - 1))
        self.both("take_back", payment=payment, amount=amount)

    @invariant()
    def both_ledgers_are_the_same(self) -> None:
        seen = []
        for index in range(len(self.sides)):
            grants, events, paid = self.runner.run(self._rows(index))
            order = {grant.id: n for n, grant in enumerate(grants)}
            paid_order = {payment_id: n for n, payment_id in enumerate(paid)}

            async def user(index: int = index) -> User:
                async with self.sides[index].db.read() as session:
                    return await session.get(User, self.user_ids[index])

            row = self.runner.run(user())
            seen.append(
                (
                    (row.tier, row.credits_available, row.credits_next_expiry),
                    row.allowance_period_start,
                    [
                        (
                            *(g.amount, g.remaining, g.expires_at, g.is_purchased, g.source),
                            *(paid_order.get(g.payment_id), g.created_at),
                        )
                        for g in grants
                    ],
                    [
                        (
                            *(e.kind, e.amount, e.balance_after, e.reason, e.source, e.actor),
                            *(self._key(index, e.idempotency_key), e.request_id, e.created_at),
                            *(order.get(e.grant_id), paid_order.get(e.payment_id)),
                            [(order[g], n) for g, n in e.allocations or []],
                        )
                        for e in events
                    ],
                )
            )
        assert seen[0] == seen[1]


def test_spends_in_sql_and_in_python_leave_identical_ledgers(
    sqlite_template: Path, postgres_database: str, tmp_path: Path
) -> None:
    sqlite_file = tmp_path / "twin.db"
    shutil.copyfile(sqlite_template, sqlite_file)
    TwinLedgers.urls = (f"sqlite+aiosqlite:///{sqlite_file}", postgres_database)
    run_state_machine_as_test(
        TwinLedgers,
        settings=settings(max_examples=30, stateful_step_count=30, deadline=None, database=None),
    )

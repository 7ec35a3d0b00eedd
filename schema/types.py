"""GraphQL object types: users, plans, credit balances, ledger events, tier changes, payments."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry
from strawberry import Info, Private

from resolvers import models
from resolvers.catalog.model import Tier
from resolvers.entitlements import access as entitlements
from resolvers.insights import analytics
from resolvers.ledger import allowances, history
from resolvers.loaders import unexpired
from schema.connections import Connection, connection, decode_cursor, page_size
from schema.context import BadUserInput
from schema.entitlements import Entitlement, EntitlementOverride
from schema.insights import PremiumOverlay

if TYPE_CHECKING:
    from schema.holds import CreditHold


@strawberry.type
class Money:
    amount: int = strawberry.field(description="Minor units (cents).")
    currency: str


@strawberry.type(description="A tier of the catalog, with copy in the requested locale.")
class Plan:
    tier: Private[Tier]
    locale: Private[str]

    @strawberry.field
    def code(self) -> str:
        return self.tier.code

    @strawberry.field
    def rank(self) -> int:
        return self.tier.rank

    @strawberry.field
    def name(self) -> str:
        return self.tier.copy[self.locale].name

    @strawberry.field
    def monthly_credits(self) -> int:
        return self.tier.monthly_credits

    @strawberry.field
    def trial_days(self) -> int:
        return self.tier.trial_days

    @strawberry.field(description="Feature codes, for gating in the frontend.")
    def features(self) -> list[str]:
        return list(self.tier.features)

    @strawberry.field(description="Feature descriptions in the requested locale.")
    def feature_descriptions(self) -> list[str]:
        return list(self.tier.copy[self.locale].features)

    @strawberry.field
    def prices(self) -> list[Money]:
        return [Money(amount=a, currency=c) for c, a in self.tier.prices.items()]


@strawberry.type
class CreditGrant:
    id: strawberry.ID
    amount: int
    remaining: int
    expires_at: datetime | None
    source: str
    is_purchased: bool
    reason: str
    payment_id: strawberry.ID | None
    created_at: datetime

    @classmethod
    def pending(cls, due: allowances.PendingAllowance) -> CreditGrant:
        return cls(
            id=strawberry.ID(f"pending-allowance-{due.period_start:%Y-%m}"),
            amount=due.amount,
            remaining=due.amount,
            expires_at=due.expires_at,
            source="plan_allowance",
            is_purchased=False,
            reason=due.reason,
            payment_id=None,
            created_at=due.period_start,
        )

    @classmethod
    def from_row(cls, row: models.CreditGrant) -> CreditGrant:
        return cls(
            id=strawberry.ID(str(row.id)),
            amount=row.amount,
            remaining=row.remaining,
            expires_at=row.expires_at,
            source=row.source,
            is_purchased=row.is_purchased,
            reason=row.reason,
            payment_id=_id(row.payment_id),
            created_at=row.created_at,
        )


@strawberry.type(description="One entry of the append-only credit ledger.")
class CreditEvent:
    id: strawberry.ID
    kind: str = strawberry.field(description="grant, consume, expire or revoke.")
    amount: int = strawberry.field(description="Signed: positive adds credits.")
    balance_after: int
    reason: str
    source: str
    actor: str
    request_id: str | None
    created_at: datetime
    grant_id: strawberry.ID | None
    payment_id: strawberry.ID | None
    user_id: Private[int]

    @strawberry.field
    async def user(self, info: Info) -> User:
        return User(row=await info.context.loaders.user_by_id.load(self.user_id))

    @classmethod
    def from_row(cls, row: models.CreditEvent) -> CreditEvent:
        return cls(
            id=strawberry.ID(str(row.id)),
            kind=row.kind,
            amount=row.amount,
            balance_after=row.balance_after,
            reason=row.reason,
            source=row.source,
            actor=row.actor,
            request_id=row.request_id,
            created_at=row.created_at,
            grant_id=_id(row.grant_id),
            payment_id=_id(row.payment_id),
            user_id=row.user_id,
        )


@strawberry.type(description="One change of a user's tier.")
class TierChange:
    id: strawberry.ID
    from_tier: str
    to_tier: str
    reason: str
    source: str
    actor: str
    request_id: str | None
    created_at: datetime
    user_id: Private[int]

    @strawberry.field
    async def user(self, info: Info) -> User:
        return User(row=await info.context.loaders.user_by_id.load(self.user_id))

    @classmethod
    def from_row(cls, row: models.TierChange) -> TierChange:
        return cls(
            id=strawberry.ID(str(row.id)),
            from_tier=row.from_tier,
            to_tier=row.to_tier,
            reason=row.reason,
            source=row.source,
            actor=row.actor,
            request_id=row.request_id,
            created_at=row.created_at,
            user_id=row.user_id,
        )


EntitlementChange = Annotated[
    CreditEvent | TierChange | EntitlementOverride, strawberry.union("EntitlementChange")
]


@strawberry.type
class Payment:
    id: strawberry.ID
    kind: str = strawberry.field(description="credit_pack or subscription.")
    amount: int = strawberry.field(description="Minor units (cents).")
    currency: str
    status: str
    amount_refunded: int
    credits_granted: int
    credits_revoked: int
    credits_unrecovered: int = strawberry.field(
        description="Credits a refund should have taken back but that were already spent."
    )
    pack_code: str | None
    tier_code: str | None
    stripe_object_id: str
    stripe_payment_intent_id: str | None
    stripe_charge_id: str | None
    stripe_invoice_id: str | None
    created_at: datetime
    user_id: Private[int]

    @strawberry.field(description="The grants this payment paid for, with what is left of them.")
    async def grants(self, info: Info) -> list[CreditGrant]:
        rows = await info.context.loaders.payment_grants.load(int(self.id))
        return [CreditGrant.from_row(r) for r in rows]

    @strawberry.field(description="The ledger events this payment caused (grants, take-backs).")
    async def credit_events(self, info: Info) -> list[CreditEvent]:
        rows = await info.context.loaders.payment_events.load(int(self.id))
        return [CreditEvent.from_row(r) for r in rows]

    @strawberry.field
    async def user(self, info: Info) -> User:
        return User(row=await info.context.loaders.user_by_id.load(self.user_id))

    @classmethod
    def from_row(cls, row: models.Payment) -> Payment:
        return cls(
            id=strawberry.ID(str(row.id)),
            kind=row.kind,
            amount=row.amount,
            currency=row.currency,
            status=row.status,
            amount_refunded=row.amount_refunded,
            credits_granted=row.credits_granted,
            credits_revoked=row.credits_revoked,
            credits_unrecovered=row.credits_unrecovered,
            pack_code=row.pack_code,
            tier_code=row.tier_code,
            stripe_object_id=row.stripe_object_id,
            stripe_payment_intent_id=row.stripe_payment_intent_id,
            stripe_charge_id=row.stripe_charge_id,
            stripe_invoice_id=row.stripe_invoice_id,
            created_at=row.created_at,
            user_id=row.user_id,
        )


@strawberry.type(
    description="The user's Stripe subscription as the gateway last stored it (named so that"
    " codegen tools do not take it for the GraphQL subscription root)."
)
class BillingSubscription:
    id: str = strawberry.field(description="The Stripe subscription id.")
    status: str | None
    price_id: str | None
    current_period_end: datetime | None
    trial_ends_at: datetime | None


@strawberry.type
class CreditBalance:
    user: Private[models.User]
    # Set for credits(at:): the balance rebuilt from the ledger as it stood then.
    past: Private[history.BalanceAt | None] = None
    # Set by subscriptions: the ledger position read with the row, boxed ((None,): no event yet).
    position: Private[tuple[int | None] | None] = None

    def _pending(self, info: Info) -> allowances.PendingAllowance | None:
        # Reads never write: a due monthly allowance shows as if granted (it is, on next write).
        return allowances.pending_allowance(
            self.user, catalog=info.context.catalog, now=info.context.clock()
        )

    @strawberry.field(
        description="Spendable credits now: unexpired grants' remaining amounts, with this "
        "month's plan allowance counted once it is due, even before it is written."
    )
    def available(self, info: Info) -> int:
        if self.past is not None:
            return self.past.available
        now = info.context.clock()
        row = self.user
        pending = self._pending(info)
        due = pending.amount if pending else 0
        holds_due = row.holds_next_expiry is not None and row.holds_next_expiry <= now
        if not holds_due and (row.credits_next_expiry is None or row.credits_next_expiry > now):
            # Synchronous on purpose: an async resolver costs a task per user in a list.
            return row.credits_available + due
        # A grant or a hold expired since the last write: count what is left of the grants.
        return self._unexpired_total(info, now, due, holds_due)  # type: ignore[return-value]

    async def _unexpired_total(
        self, info: Info, now: datetime, due: int, holds_due: bool = False
    ) -> int:
        loaders = info.context.loaders
        grants = await loaders.open_grants.load(self.user.id)
        total = sum(g.remaining for g in unexpired(grants, now)) + due
        if holds_due:
            # A run-out hold's credits are back on their grants from expiresAt on, swept or not.
            active = await loaders.active_holds.load(self.user.id)
            back = [a for h in active if h.expires_at <= now for a in h.allocations]
            expiries = await loaders.grant_expiry.load_many([gid for gid, _ in back])
            total += sum(
                n
                for (_, n), box in zip(back, expiries, strict=True)
                if box is not None and (box[0] is None or box[0] > now)
            )
        return total

    @strawberry.field(description="Credits on active holds: out of available, not spent yet.")
    def held(self, info: Info) -> int:
        if self.past is not None:
            return self.past.held
        now = info.context.clock()
        if self.user.holds_next_expiry is None or self.user.holds_next_expiry > now:
            return self.user.credits_held
        return self._held_now(info, now)  # type: ignore[return-value]

    async def _held_now(self, info: Info, now: datetime) -> int:
        active = await info.context.loaders.active_holds.load(self.user.id)
        return sum(h.amount for h in active if h.expires_at > now)

    @strawberry.field(description="The active holds, soonest expiry first.")
    async def holds(
        self, info: Info
    ) -> list[Annotated[CreditHold, strawberry.lazy("schema.holds")]]:
        from schema.holds import CreditHold

        if self.past is not None:
            return [CreditHold(row=h, as_of=self.past.at) for h in self.past.holds]
        now = info.context.clock()
        active = await info.context.loaders.active_holds.load(self.user.id)
        return [CreditHold(row=h) for h in active if h.expires_at > now]

    @strawberry.field(
        description="The ledger position this balance reflects: the id of the user's newest "
        "ledger event (with credits(at:): the last one written by then); null before the first. "
        "Subscriptions carry it, so a client can tell a fresh balance from a stale one."
    )
    async def as_of(self, info: Info) -> strawberry.ID | None:
        if self.past is not None:
            return _id(self.past.as_of)
        if self.position is not None:
            return _id(self.position[0])
        return _id(await info.context.loaders.ledger_position.load(self.user.id))

    @strawberry.field(
        description="Grants with credits left, soonest expiry first; a due monthly allowance "
        "not written yet is listed with an id starting `pending-`."
    )
    async def grants(self, info: Info) -> list[CreditGrant]:
        if self.past is not None:
            return [
                dataclasses.replace(CreditGrant.from_row(g.grant), remaining=g.remaining)
                for g in self.past.grants
            ]
        now = info.context.clock()
        grants = await info.context.loaders.open_grants.load(self.user.id)
        listed = [CreditGrant.from_row(g) for g in unexpired(grants, now)]
        if pending := self._pending(info):
            listed.append(CreditGrant.pending(pending))
            listed.sort(key=lambda g: (g.expires_at is None, g.expires_at or now))
        return listed

    @strawberry.field
    async def next_expiry(self, info: Info) -> datetime | None:
        if self.past is not None:
            return self.past.next_expiry
        now = info.context.clock()
        pending = self._pending(info)
        soonest = self.user.credits_next_expiry
        if soonest is not None and soonest <= now:
            grants = await info.context.loaders.open_grants.load(self.user.id)
            soonest = min(
                (g.expires_at for g in unexpired(grants, now) if g.expires_at), default=None
            )
        if pending is not None and (soonest is None or pending.expires_at < soonest):
            return pending.expires_at
        return soonest


@strawberry.type
class User:
    row: Private[models.User]

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(str(self.row.id))

    @strawberry.field
    def email(self) -> str:
        return self.row.email

    @strawberry.field
    def tier(self) -> str:
        return self.row.tier

    @strawberry.field
    def plan(self, info: Info) -> Plan:
        catalog = info.context.catalog
        tier = catalog.tier(self.row.tier) or catalog.default_tier
        locale = self.row.locale if self.row.locale in catalog.locales else catalog.locales[0]
        return Plan(tier=tier, locale=locale)

    @strawberry.field
    def locale(self) -> str | None:
        return self.row.locale

    @strawberry.field
    def external_id(self) -> str | None:
        return self.row.external_id

    @strawberry.field
    def stripe_customer_id(self) -> str | None:
        return self.row.stripe_customer_id

    @strawberry.field
    def trial_ends_at(self) -> datetime | None:
        return self.row.trial_ends_at

    @strawberry.field
    def created_at(self) -> datetime:
        return self.row.created_at

    @strawberry.field(
        description="The balance now, or with `at` as it stood then (from the ledger; a time "
        "before the user existed is an empty balance, a time in the future an error)."
    )
    def credits(self, info: Info, at: datetime | None = None) -> CreditBalance:
        if at is None:
            # Synchronous on purpose: an async resolver costs a task per user in a list.
            return CreditBalance(user=self.row)
        return self._credits_at(info, at)  # type: ignore[return-value]

    async def _credits_at(self, info: Info, at: datetime) -> CreditBalance:
        if at.tzinfo is None:
            raise BadUserInput("at: needs a time zone, e.g. Z or +01:00")
        if at > info.context.clock():
            raise BadUserInput("at: must not be in the future")
        async with info.context.db.read() as session:
            past = await history.balance_at(session, self.row.id, at)
        return CreditBalance(user=self.row, past=past)

    @strawberry.field(description="The credit ledger, newest first; since/until bound its times.")
    async def credit_events(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Connection[CreditEvent]:
        size = page_size(first)
        if since is not None or until is not None:
            if any(t is not None and t.tzinfo is None for t in (since, until)):
                raise BadUserInput("since, until: need a time zone, e.g. Z or +01:00")
            async with info.context.db.read() as session:
                rows = await history.events_between(
                    session,
                    self.row.id,
                    since=since,
                    until=until,
                    limit=size + 1,
                    before_id=decode_cursor(after),
                )
            return connection(rows, size, CreditEvent.from_row)
        loader = info.context.loaders.newest_events(size + 1, decode_cursor(after))
        return connection(await loader.load(self.row.id), size, CreditEvent.from_row)

    @strawberry.field(description="Payments, newest first.")
    async def payments(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[Payment]:
        size = page_size(first)
        loader = info.context.loaders.newest_payments(size + 1, decode_cursor(after))
        return connection(await loader.load(self.row.id), size, Payment.from_row)

    @strawberry.field(description="Whether to show the premium overlay in this browser session.")
    async def premium_overlay(self, info: Info, session_id: str) -> PremiumOverlay:
        ctx = info.context
        if failure := analytics.check_session_id(session_id, required=True):
            raise BadUserInput(failure.message)
        # Batched: in a list of users every one asks about the same session.
        shown = await ctx.loaders.overlay_shown.load(analytics.overlay_dedupe_key(session_id))
        eligible = analytics.is_upgrade_prompt_eligible(self.row, ctx.catalog, ctx.clock())
        return analytics.PremiumOverlay(eligible=eligible, shown=shown)  # type: ignore[return-value]

    @strawberry.field(description="Every feature of the catalog: access, limit, usage now.")
    def entitlements(self, info: Info) -> list[Entitlement]:
        ctx = info.context
        shown = entitlements.entitlements_of(ctx.catalog, self.row, ctx.clock())
        return [Entitlement.of(e) for e in shown]

    @strawberry.field(description="One feature's entitlement; null if not in the catalog.")
    def entitlement(self, info: Info, feature: str) -> Entitlement | None:
        ctx = info.context
        if feature not in ctx.catalog.features:
            return None
        return Entitlement.of(
            entitlements.entitlement_of(ctx.catalog, self.row, feature, ctx.clock())
        )

    @strawberry.field
    def subscription(self) -> BillingSubscription | None:
        if not self.row.stripe_subscription_id:
            return None
        return BillingSubscription(
            id=self.row.stripe_subscription_id,
            status=self.row.subscription_status,
            price_id=self.row.subscription_price_id,
            current_period_end=self.row.subscription_period_end,
            trial_ends_at=self.row.trial_ends_at,
        )


def _id(value: int | None) -> strawberry.ID | None:
    return None if value is None else strawberry.ID(str(value))

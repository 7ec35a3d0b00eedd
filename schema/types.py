"""GraphQL object types: users, plans, credit balances, ledger events, tier changes, payments."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import strawberry
from strawberry import Info, Private

from resolvers import allowances, analytics, entitlements, models
from resolvers.catalog import Tier
from resolvers.loaders import unexpired
from schema.connections import Connection, connection, decode_cursor, page_size
from schema.context import BadUserInput
from schema.entitlements import Entitlement, EntitlementOverride
from schema.insights import PremiumOverlay


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


@strawberry.type
class Subscription:
    id: str = strawberry.field(description="The Stripe subscription id.")
    status: str | None
    price_id: str | None
    current_period_end: datetime | None
    trial_ends_at: datetime | None


@strawberry.type
class CreditBalance:
    user: Private[models.User]

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
        now = info.context.clock()
        row = self.user
        pending = self._pending(info)
        due = pending.amount if pending else 0
        if row.credits_next_expiry is None or row.credits_next_expiry > now:
            # Synchronous on purpose: an async resolver costs a task per user in a list.
            return row.credits_available + due
        # A grant expired since the last write: count what is left of the unexpired ones.
        return self._unexpired_total(info, now, due)  # type: ignore[return-value]

    async def _unexpired_total(self, info: Info, now: datetime, due: int) -> int:
        grants = await info.context.loaders.open_grants.load(self.user.id)
        return sum(g.remaining for g in unexpired(grants, now)) + due

    @strawberry.field(
        description="Grants with credits left, soonest expiry first; a due monthly allowance "
        "not written yet is listed with an id starting `pending-`."
    )
    async def grants(self, info: Info) -> list[CreditGrant]:
        now = info.context.clock()
        grants = await info.context.loaders.open_grants.load(self.user.id)
        listed = [CreditGrant.from_row(g) for g in unexpired(grants, now)]
        if pending := self._pending(info):
            listed.append(CreditGrant.pending(pending))
            listed.sort(key=lambda g: (g.expires_at is None, g.expires_at or now))
        return listed

    @strawberry.field
    async def next_expiry(self, info: Info) -> datetime | None:
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

    @strawberry.field
    def credits(self) -> CreditBalance:
        return CreditBalance(user=self.row)

    @strawberry.field(description="The credit ledger, newest first.")
    async def credit_events(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[CreditEvent]:
        size = page_size(first)
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
    def subscription(self) -> Subscription | None:
        if not self.row.stripe_subscription_id:
            return None
        return Subscription(
            id=self.row.stripe_subscription_id,
            status=self.row.subscription_status,
            price_id=self.row.subscription_price_id,
            current_period_end=self.row.subscription_period_end,
            trial_ends_at=self.row.trial_ends_at,
        )


def _id(value: int | None) -> strawberry.ID | None:
    return None if value is None else strawberry.ID(str(value))

"""The GraphQL User: a customer's account, plan, balance, ledger, payments and entitlements."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Any

import strawberry
from strawberry import Info, Private

from resolvers import loaders, models
from resolvers.entitlements import access as entitlements
from resolvers.errors import InvalidInput
from resolvers.insights import analytics
from resolvers.ledger import history
from schema.billing import BillingSubscription
from schema.connections import Connection, connection, decode_cursor, page_size
from schema.context import BadUserInput, Context
from schema.credits import CreditBalance, CreditEvent
from schema.entitlements import Entitlement
from schema.insights import PremiumOverlay
from schema.payments import Payment
from schema.plans import Plan


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
        "before the user existed is an empty balance, a time in the future an error).",
        graphql_type=CreditBalance,
    )
    def credits(
        self, info: Info, at: datetime | None = None
    ) -> CreditBalance | Awaitable[CreditBalance]:
        if at is None:
            # Synchronous on purpose: an async resolver costs a task per user in a list.
            return CreditBalance(user=self.row)
        return self._credits_at(info, at)

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

    @strawberry.field(
        description="Whether to show the premium overlay in this browser session.",
        graphql_type=PremiumOverlay,
    )
    async def premium_overlay(self, info: Info, session_id: str) -> analytics.PremiumOverlay:
        ctx = info.context
        overlay = await analytics.premium_overlay(
            self.row,
            session_id=session_id,
            loaders=ctx.loaders,
            catalog=ctx.catalog,
            now=ctx.clock(),
        )
        if isinstance(overlay, InvalidInput):
            raise BadUserInput(overlay.message)
        return overlay

    @strawberry.field(
        description="Every feature of the catalog: access, limit, usage now.",
        graphql_type=list[Entitlement],
    )
    def entitlements(self, info: Info) -> list[Entitlement] | Awaitable[list[Entitlement]]:
        if not entitlements.counts_usage(self.row):
            return self._entitlements_counted(info)
        return _entitlements_of(info.context, self.row)

    async def _entitlements_counted(self, info: Info) -> list[Entitlement]:
        return _entitlements_of(info.context, await _counted(info.context, self.row))

    @strawberry.field(
        description="One feature's entitlement; null if not in the catalog.",
        graphql_type=Entitlement | None,
    )
    def entitlement(
        self, info: Info, feature: str
    ) -> Entitlement | Awaitable[Entitlement | None] | None:
        if feature in info.context.catalog.features and not entitlements.counts_usage(self.row):
            return self._entitlement_counted(info, feature)
        return _entitlement_of(info.context, self.row, feature)

    async def _entitlement_counted(self, info: Info, feature: str) -> Entitlement | None:
        return _entitlement_of(info.context, await _counted(info.context, self.row), feature)

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


def _entitlements_of(ctx: Context, user: Any) -> list[Entitlement]:
    shown = entitlements.entitlements_of(ctx.catalog, user, ctx.clock())
    return [Entitlement.of(e) for e in shown]


def _entitlement_of(ctx: Context, user: Any, feature: str) -> Entitlement | None:
    if feature not in ctx.catalog.features:
        return None
    return Entitlement.of(entitlements.entitlement_of(ctx.catalog, user, feature, ctx.clock()))


async def _counted(ctx: Context, account: Any) -> Any:
    """A write's account with the usage committed on its row, read afresh: not through the
    request's loaders, which may hold the row as it was before a later root field wrote."""
    async with ctx.db.connect() as conn:
        (row,) = await loaders.users_by_id(conn, [account.id])
    return entitlements.with_usage_of(account, row)

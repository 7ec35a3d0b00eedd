"""The Query root: the viewer's own account, staff look-ups, plans and the change history."""

from __future__ import annotations

from typing import TypeVar

import strawberry
from strawberry import Info

from resolvers import users
from resolvers.billing import events as billing
from resolvers.billing import payments
from resolvers.catalog import pricing
from resolvers.errors import InvalidInput
from resolvers.insights import analytics, diagnose, metrics
from resolvers.ledger import changes
from resolvers.models import parse_row_id
from resolvers.users import normalize_email
from schema.billing import (
    WebhookEventConnection,
    WebhookEventStatus,
    event_connection,
    event_id_from_cursor,
)
from schema.changes import EntitlementChange, entitlement_change
from schema.connections import Connection, connection, decode_cursor, page_size
from schema.context import VIEWER, BadUserInput, Context
from schema.insights import AnalyticsEvent, Diagnosis, EntitlementMetrics, Pricing
from schema.payments import Payment
from schema.permissions import ANY_CALLER, DASHBOARD, STAFF_READ, SUPPORT
from schema.plans import Plan
from schema.users import User

T = TypeVar("T")

MAX_SEARCH_LENGTH = 320


@strawberry.type
class Query:
    @strawberry.field(
        permission_classes=[ANY_CALLER],
        description="The caller's own account (end-user token); null for API keys.",
    )
    async def viewer(self, info: Info) -> User | None:
        ctx: Context = info.context
        principal = ctx.principal
        if principal is None or principal.role != VIEWER or principal.user_id is None:
            return None
        row = await ctx.loaders.user_by_id.load(principal.user_id)
        return User(row=row) if row is not None else None

    @strawberry.field(
        permission_classes=[STAFF_READ],
        description="One user by email or id (staff keys).",
    )
    async def user(
        self, info: Info, email: str | None = None, id: strawberry.ID | None = None
    ) -> User | None:
        ctx: Context = info.context
        if (email is None) == (id is None):
            raise BadUserInput("give exactly one of email or id")
        if id is not None:
            if (user_id := parse_row_id(str(id))) is None:
                return None
            row = await ctx.loaders.user_by_id.load(user_id)
        else:
            row = await ctx.loaders.user_by_email.load(normalize_email(email or ""))
        return User(row=row) if row is not None else None

    @strawberry.field(
        permission_classes=[STAFF_READ],
        description="Users by id; filter by tier, search by email prefix.",
    )
    async def users(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        tier: str | None = None,
        search: str | None = None,
    ) -> Connection[User]:
        ctx: Context = info.context
        size = page_size(first)
        if search and len(search) > MAX_SEARCH_LENGTH:
            raise BadUserInput(f"search is longer than {MAX_SEARCH_LENGTH} characters")
        async with ctx.db.read() as session:
            rows = await users.list_users(
                session,
                limit=size + 1,
                after_id=decode_cursor(after),
                tier=tier,
                email_prefix=search or None,
            )
        for row in rows:
            ctx.loaders.prime_user(row)
        return connection(rows, size, lambda row: User(row=row))

    @strawberry.field(description="The catalog's tiers, with copy in the locale (default en).")
    def plans(self, info: Info, locale: str | None = None) -> list[Plan]:
        catalog = info.context.catalog
        chosen = locale if locale in catalog.locales else catalog.locales[0]
        return [Plan(tier=tier, locale=chosen) for tier in catalog.tiers]

    @strawberry.field(
        permission_classes=[SUPPORT],
        description="Ledger events and tier changes written under one X-Request-ID, oldest first.",
    )
    async def entitlement_changes(self, info: Info, request_id: str) -> list[EntitlementChange]:
        async with info.context.db.read() as session:
            rows = await changes.changes_by_request_id(session, request_id)
        return [entitlement_change(r) for r in rows]

    @strawberry.field(
        description="Tier cards and credit packs with CTAs for the caller (anyone may ask). "
        "Locale from the argument, else the viewer's stored locale, else Accept-Language, "
        "else en. A currency the catalog does not sell is BAD_USER_INPUT.",
        graphql_type=Pricing,
    )
    async def pricing(
        self, info: Info, locale: str | None = None, currency: str | None = None
    ) -> pricing.Pricing:
        ctx: Context = info.context
        viewer = None
        principal = ctx.principal
        if principal is not None and principal.role == VIEWER and principal.user_id is not None:
            viewer = await ctx.loaders.user_by_id.load(principal.user_id)
        page = pricing.pricing_page(
            catalog=ctx.catalog,
            locale=locale,
            currency=currency,
            viewer=viewer,
            accept_language=ctx.accept_language,
            app_base_url=ctx.app_base_url,
        )
        return _or_bad_input(page)

    @strawberry.field(
        permission_classes=[DASHBOARD],
        description="The runbook's CRO query: these events (default cta_upgrade_click and "
        "premium_overlay_impression), newest first.",
    )
    async def analytics_events(
        self, info: Info, names: list[str] | None = None, last: int | None = 20
    ) -> list[AnalyticsEvent]:
        async with info.context.db.read() as session:
            rows = await analytics.recent_analytics_events(
                session, names=names, last=20 if last is None else last
            )
        return [AnalyticsEvent.from_row(row) for row in _or_bad_input(rows)]

    @strawberry.field(
        permission_classes=[DASHBOARD],
        description="collect_entitlement_metrics: plans, trials, payments, credits (3 statements).",
        graphql_type=EntitlementMetrics,
    )
    async def metrics(self, info: Info, days: int | None = 7) -> metrics.EntitlementMetrics:
        ctx: Context = info.context
        async with ctx.db.read() as session:
            result = await metrics.collect_entitlement_metrics(
                session, now=ctx.clock(), days=7 if days is None else days, catalog=ctx.catalog
            )
        return _or_bad_input(result)

    @strawberry.field(
        permission_classes=[SUPPORT],
        description="The runbook's checks on one account, each finding with its escalation path.",
        graphql_type=Diagnosis,
    )
    async def diagnose(self, info: Info, email: str) -> diagnose.Diagnosis:
        ctx: Context = info.context
        async with ctx.db.read() as session:
            return await diagnose.diagnose(
                session, email=email, catalog=ctx.catalog, now=ctx.clock()
            )

    @strawberry.field(
        permission_classes=[DASHBOARD],
        description="Stored Stripe events, newest received first; filter by status.",
    )
    async def webhook_events(
        self,
        info: Info,
        status: WebhookEventStatus | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> WebhookEventConnection:
        async with info.context.db.read() as session:
            page = await billing.list_stripe_events(
                session,
                status=status.value if status else None,
                limit=page_size(first),
                after=event_id_from_cursor(after),
            )
        return event_connection(_or_bad_input(page))

    @strawberry.field(
        permission_classes=[DASHBOARD],
        description="Payments of every user, newest first.",
    )
    async def payments(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[Payment]:
        size = page_size(first)
        async with info.context.db.read() as session:
            rows = await payments.list_payments(
                session, limit=size + 1, before_id=decode_cursor(after)
            )
        return connection(rows, size, Payment.from_row)

    @strawberry.field(
        permission_classes=[SUPPORT],
        description="A payment by its id or any Stripe id it carries (cs_, in_, pi_, ch_): "
        "the runbook's way from a payment to its grant and ledger events.",
    )
    async def payment(self, info: Info, ref: str) -> Payment | None:
        async with info.context.db.read() as session:
            found = await payments.find_payment(session, ref=ref)
        if isinstance(found, payments.PaymentDetails):
            return Payment.from_row(found.payment)
        return None


def _or_bad_input(value: T | InvalidInput) -> T:
    """Arguments outside a mutation that a resolver refused: a BAD_USER_INPUT error."""
    if isinstance(value, InvalidInput):
        raise BadUserInput(value.message)
    return value

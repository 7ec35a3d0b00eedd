"""The compiled fields of the object types: what each reads from its row, as the schema/ types do.

Every entry must answer exactly what the Strawberry resolver of the same field answers; the
differential tests run both on the same data and compare.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any, NamedTuple

from gateway.compiled.driver import NEWEST_EVENTS, NEWEST_PAYMENTS, DriverRead
from gateway.compiled.mirrored import mirrored
from gateway.compiled.payloads import PAYLOAD_FIELDS, PAYLOAD_TYPE_OF
from gateway.compiled.resolver import (
    Args,
    Resolver,
    attr,
    batch,
    datetime_attr,
    id_attr,
    source,
    with_run,
)
from gateway.compiled.run import Fallback, Run
from resolvers import loaders, models
from resolvers.catalog import pricing
from resolvers.catalog.model import Tier
from resolvers.entitlements import access as entitlements
from resolvers.ledger import allowances
from resolvers.loaders import unexpired
from schema.connections import decode_cursor, encode_cursor, page_size

_NO_CURSOR = 2**62


class Page(NamedTuple):
    """A connection's rows, read with one extra row that only tells that more exist."""

    rows: list[Any]
    size: int


@dataclass(frozen=True, slots=True)
class PendingGrant:
    """A due monthly allowance not written yet, shaped like a grant row (reads never write)."""

    id: str
    amount: int
    remaining: int
    expires_at: datetime
    source: str
    is_purchased: bool
    reason: str
    payment_id: None
    created_at: datetime

    @classmethod
    def of(cls, due: allowances.PendingAllowance) -> PendingGrant:
        return cls(
            id=f"pending-allowance-{due.period_start:%Y-%m}",
            amount=due.amount,
            remaining=due.amount,
            expires_at=due.expires_at,
            source="plan_allowance",
            is_purchased=False,
            reason=due.reason,
            payment_id=None,
            created_at=due.period_start,
        )


def _pending(user: Any, run: Run) -> allowances.PendingAllowance | None:
    return allowances.pending_allowance(user, catalog=run.catalog, now=run.now)


def _plan(user: Any, run: Run, _args: Args) -> tuple[Tier, str]:
    catalog = run.catalog
    tier = catalog.tier(user.tier) or catalog.default_tier
    locale = user.locale if user.locale in catalog.locales else catalog.locales[0]
    return tier, locale


def _subscription(user: Any) -> Any:
    return user if user.stripe_subscription_id else None


def _paged(read: DriverRead) -> Resolver:
    """A connection per user, every user's page read in one statement.

    Not on the loop (Resolver.on_loop): SQLite ranks all of a user's rows to find their newest
    page; measured on a user with 300 events, 0.7-0.9 ms in SQLite alone for first: 20 or 100
    (a point read by key: 30 µs), growing with the history. On aiosqlite's thread it runs with
    the GIL released while the loop serves other requests.
    """

    async def load(run: Run, users: list[Any], args: Args) -> list[Page]:
        size = page_size(args.get("first"))
        before = decode_cursor(args.get("after"))
        ids = [u.id for u in users]
        pages: dict[int, list[Any]] = {i: [] for i in ids}
        # No cursor: below any id, as resolvers.loaders reads a first page.
        for row in await run.fetch(read, ids, limit=size + 1, before=before or _NO_CURSOR):
            pages[row.user_id].append(row)
        return [Page(pages[i], size) for i in ids]

    return batch(load, on_loop=False)


def _has_stale_expiry(user: Any, now: datetime) -> bool:
    return user.credits_next_expiry is not None and user.credits_next_expiry <= now


async def _available(run: Run, users: list[Any], _args: Args) -> list[int]:
    now = run.now
    if any(u.holds_next_expiry is not None and u.holds_next_expiry <= now for u in users):
        # A hold ran out and is not swept yet (at most the sweep's interval): rare enough to
        # leave to graphql-core, which gives its credits back to their grants.
        raise Fallback("a run-out hold")
    due = [p.amount if (p := _pending(u, run)) else 0 for u in users]
    # A grant expired since the last write: count what is left of the unexpired ones.
    stale = [
        u.id for u in users if u.credits_next_expiry is not None and u.credits_next_expiry <= now
    ]
    grants = dict(zip(stale, await run.open_grants(stale), strict=True)) if stale else {}
    return [
        (
            sum(g.remaining for g in unexpired(grants[u.id], now))
            if u.id in grants
            else u.credits_available
        )
        + extra
        for u, extra in zip(users, due, strict=True)
    ]


async def _grants(run: Run, users: list[Any], _args: Args) -> list[list[Any]]:
    now = run.now
    answers = []
    for user, grants in zip(users, await run.open_grants([u.id for u in users]), strict=True):
        listed: list[Any] = unexpired(grants, now)
        if pending := _pending(user, run):
            listed.append(PendingGrant.of(pending))
            listed.sort(key=lambda g: (g.expires_at is None, g.expires_at or now))
        answers.append(listed)
    return answers


async def _next_expiry(run: Run, users: list[Any], _args: Args) -> list[str | None]:
    now = run.now
    stale = [
        u.id for u in users if u.credits_next_expiry is not None and u.credits_next_expiry <= now
    ]
    grants = dict(zip(stale, await run.open_grants(stale), strict=True)) if stale else {}
    answers: list[str | None] = []
    for user in users:
        soonest = user.credits_next_expiry
        if user.id in grants:
            soonest = min(
                (g.expires_at for g in unexpired(grants[user.id], now) if g.expires_at),
                default=None,
            )
        pending = _pending(user, run)
        if pending is not None and (soonest is None or pending.expires_at < soonest):
            soonest = pending.expires_at
        answers.append(None if soonest is None else soonest.isoformat())
    return answers


async def _counted(run: Run, users: list[Any]) -> list[Any]:
    """The users as entitlements read them: a write's account (which carries no usage) with
    the usage committed on its row, read after the write as schema.users reads it."""
    if all(entitlements.counts_usage(user) for user in users):
        return users
    rows = await run.users_by_id([user.id for user in users])
    return [entitlements.with_usage_of(u, row) for u, row in zip(users, rows, strict=True)]


async def _entitlements(run: Run, users: list[Any], _args: Args) -> list[list[Any]]:
    catalog, now = run.catalog, run.now
    return [entitlements.entitlements_of(catalog, u, now) for u in await _counted(run, users)]


async def _entitlement(run: Run, users: list[Any], args: Args) -> list[Any]:
    feature = args["feature"]
    if feature not in run.catalog.features:
        return [None] * len(users)
    catalog, now = run.catalog, run.now
    return [
        entitlements.entitlement_of(catalog, u, feature, now) for u in await _counted(run, users)
    ]


async def _user_of(run: Run, rows: list[Any], _args: Args) -> list[Any]:
    return await run.users_by_id([r.user_id for r in rows])


def _by_payment(read: Any) -> Resolver:
    async def load(run: Run, payments: list[Any], _args: Args) -> list[list[Any]]:
        return await read(await run.connection(), [p.id for p in payments])

    return batch(load, on_loop=False)


def _end_cursor(page: Page) -> str | None:
    shown = page.rows[: page.size]
    return encode_cursor(shown[-1].id) if shown else None


def _connection(node_type: str) -> dict[str, dict[str, Resolver]]:
    return {
        f"{node_type}Connection": {
            "edges": source(lambda page: page.rows[: page.size]),
            "pageInfo": source(lambda page: page),
        },
        f"{node_type}Edge": {
            "node": source(lambda row: row),
            "cursor": source(lambda row: encode_cursor(row.id)),
        },
    }


# The member type of each value of a compiled union, by the row's class.
_CHANGE_TYPES = {
    models.CreditEvent: "CreditEvent",
    models.TierChange: "TierChange",
    models.EntitlementOverride: "EntitlementOverride",
}

# For each compiled union: the name of the member type a value is answered as.
TYPE_OF: dict[str, Callable[[Any], str]] = {
    "EntitlementChange": lambda row: _CHANGE_TYPES[type(row)],
    **PAYLOAD_TYPE_OF,
}

# The arguments each compiled field reads; a selection passing any other runs on graphql-core.
FIELD_ARGUMENTS: dict[tuple[str, str], frozenset[str]] = {
    ("User", "creditEvents"): frozenset({"first", "after"}),
    ("User", "payments"): frozenset({"first", "after"}),
    ("User", "entitlement"): frozenset({"feature"}),
}

FIELDS: dict[str, dict[str, Resolver]] = {
    "User": {
        "id": id_attr("id"),
        "email": attr("email"),
        "tier": attr("tier"),
        "plan": with_run(_plan),
        "locale": attr("locale"),
        "externalId": attr("external_id"),
        "stripeCustomerId": attr("stripe_customer_id"),
        "trialEndsAt": datetime_attr("trial_ends_at"),
        "createdAt": datetime_attr("created_at"),
        "credits": source(lambda user: user),
        "creditEvents": _paged(NEWEST_EVENTS),
        "payments": _paged(NEWEST_PAYMENTS),
        "subscription": source(_subscription),
        "entitlements": batch(_entitlements),
        "entitlement": batch(_entitlement),
    },
    "Entitlement": {
        "feature": attr("feature"),
        "hasAccess": attr("has_access"),
        "limit": attr("limit"),
        "usage": attr("usage"),
        "remaining": attr("remaining"),
        "resetsAt": datetime_attr("resets_at"),
        "source": source(lambda entitlement: entitlement.source.value),
    },
    "BillingSubscription": {
        "id": attr("stripe_subscription_id"),
        "status": attr("subscription_status"),
        "priceId": attr("subscription_price_id"),
        "currentPeriodEnd": datetime_attr("subscription_period_end"),
        "trialEndsAt": datetime_attr("trial_ends_at"),
    },
    "CreditBalance": {
        "available": batch(_available),
        "grants": batch(_grants),
        "nextExpiry": batch(_next_expiry),
    },
    "CreditGrant": {
        "id": id_attr("id"),
        "amount": attr("amount"),
        "remaining": attr("remaining"),
        "expiresAt": datetime_attr("expires_at"),
        "source": attr("source"),
        "isPurchased": attr("is_purchased"),
        "reason": attr("reason"),
        "paymentId": id_attr("payment_id"),
        "createdAt": datetime_attr("created_at"),
    },
    "CreditEvent": {
        "id": id_attr("id"),
        "kind": attr("kind"),
        "amount": attr("amount"),
        "balanceAfter": attr("balance_after"),
        "reason": attr("reason"),
        "source": attr("source"),
        "actor": attr("actor"),
        "requestId": attr("request_id"),
        "createdAt": datetime_attr("created_at"),
        "grantId": id_attr("grant_id"),
        "paymentId": id_attr("payment_id"),
        "user": batch(_user_of),
    },
    "Payment": {
        "id": id_attr("id"),
        "kind": attr("kind"),
        "amount": attr("amount"),
        "currency": attr("currency"),
        "status": attr("status"),
        "amountRefunded": attr("amount_refunded"),
        "creditsGranted": attr("credits_granted"),
        "creditsRevoked": attr("credits_revoked"),
        "creditsUnrecovered": attr("credits_unrecovered"),
        "packCode": attr("pack_code"),
        "tierCode": attr("tier_code"),
        "stripeObjectId": attr("stripe_object_id"),
        "stripePaymentIntentId": attr("stripe_payment_intent_id"),
        "stripeChargeId": attr("stripe_charge_id"),
        "stripeInvoiceId": attr("stripe_invoice_id"),
        "createdAt": datetime_attr("created_at"),
        "grants": _by_payment(loaders.grants_by_payment),
        "creditEvents": _by_payment(loaders.events_by_payment),
        "user": batch(_user_of),
    },
    "Plan": {
        "code": source(lambda plan: plan[0].code),
        "rank": source(lambda plan: plan[0].rank),
        "name": source(lambda plan: plan[0].copy[plan[1]].name),
        "monthlyCredits": source(lambda plan: plan[0].monthly_credits),
        "trialDays": source(lambda plan: plan[0].trial_days),
        "features": source(lambda plan: list(plan[0].features)),
        "featureDescriptions": source(lambda plan: list(plan[0].copy[plan[1]].features)),
        "prices": source(lambda plan: [(a, c) for c, a in plan[0].prices.items()]),
    },
    "TierChange": {
        "id": id_attr("id"),
        "fromTier": attr("from_tier"),
        "toTier": attr("to_tier"),
        "reason": attr("reason"),
        "source": attr("source"),
        "actor": attr("actor"),
        "requestId": attr("request_id"),
        "createdAt": datetime_attr("created_at"),
        "user": batch(_user_of),
    },
    "EntitlementOverride": {
        "id": id_attr("id"),
        "feature": attr("feature"),
        "hasAccess": attr("has_access"),
        "limit": attr("usage_limit"),
        "expiresAt": datetime_attr("expires_at"),
        "reason": attr("reason"),
        "source": attr("source"),
        "actor": attr("actor"),
        "requestId": attr("request_id"),
        "createdAt": datetime_attr("created_at"),
        "userId": id_attr("user_id"),
    },
    "Pricing": mirrored(pricing.Pricing),
    "TierCard": mirrored(pricing.TierCard),
    "TierEntitlement": mirrored(pricing.EntitlementLine),
    "CreditPackCard": mirrored(pricing.CreditPackCard),
    "Cta": mirrored(pricing.Cta),
    "Money": {"amount": source(itemgetter(0)), "currency": source(itemgetter(1))},
    "PageInfo": {
        "hasNextPage": source(lambda page: len(page.rows) > page.size),
        "endCursor": source(_end_cursor),
    },
    **_connection("User"),
    **_connection("CreditEvent"),
    **_connection("Payment"),
    **PAYLOAD_FIELDS,
}

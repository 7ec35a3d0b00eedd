"""Outgoing Stripe calls: Checkout for a credit pack or a tier, and the Billing Portal.

Stripe errors come back as `PaymentProviderError` values, never as exceptions. Stripe is called
before this module's only write (a new customer id on the user), and the user row is locked only
for that write, so no lock waits on Stripe on PostgreSQL. On SQLite the write transaction holds
the database lock from its first statement: there, `open_billing_portal` can run in a read
session, and the Stripe client's timeout bounds how long a checkout can hold the lock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import stripe
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.catalog.model import Catalog
from resolvers.errors import (
    InvalidInput,
    NoStripeCustomer,
    PaymentProviderError,
    PaymentsNotConfigured,
    UnknownTier,
    UserNotFound,
)
from resolvers.kinds import is_paying
from resolvers.models import User
from resolvers.users import UserRef, find_user

SUCCESS_PATH = "/billing/success?session_id={CHECKOUT_SESSION_ID}"
CANCEL_PATH = "/billing/cancel"
PORTAL_RETURN_PATH = "/billing"


@dataclass(frozen=True)
class CheckoutStarted:
    url: str
    checkout_session_id: str
    customer_id: str
    mode: str  # payment (credit pack) | subscription (tier)
    user_id: int
    new_customer: bool  # created for this checkout: remember_stripe_customer stores it


@dataclass(frozen=True)
class BillingPortalOpened:
    url: str
    customer_id: str


@dataclass(frozen=True)
class _Item:
    mode: str
    price_id: str
    metadata: dict[str, str]
    trial_days: int = 0


async def start_checkout(
    session: AsyncSession,
    *,
    user: UserRef,
    catalog: Catalog,
    stripe_client: stripe.StripeClient | None,
    app_base_url: str,
    now: datetime,
    pack_code: str | None = None,
    tier_code: str | None = None,
    currency: str | None = None,
    locale: str | None = None,
) -> (
    CheckoutStarted
    | UserNotFound
    | InvalidInput
    | UnknownTier
    | PaymentsNotConfigured
    | PaymentProviderError
):
    """A Stripe Checkout session: payment mode for a credit pack, subscription mode for a tier.

    Reads only: call it in a read session, then remember_stripe_customer in a write.

    The session carries `client_reference_id` = the user's id and `metadata.pack` or
    `metadata.tier`, which the webhook reads first. The customer is reused or created.
    """
    if stripe_client is None:
        return PaymentsNotConfigured()
    item = _checkout_item(catalog, pack_code, tier_code, currency or catalog.default_currency)
    if not isinstance(item, _Item):
        return item
    row = await find_user(session, user)
    if row is None:
        return user.not_found()
    if item.mode == "subscription" and row.stripe_subscription_id:
        if is_paying(row.subscription_status):
            return InvalidInput(
                field="tier", reason="already subscribed: change plans in the billing portal"
            )
        item = _Item(mode=item.mode, price_id=item.price_id, metadata=item.metadata)  # no trial
    metadata = {"user_id": str(row.id), **item.metadata}
    params: dict[str, Any] = {
        "mode": item.mode,
        "client_reference_id": str(row.id),
        "line_items": [{"price": item.price_id, "quantity": 1}],
        "success_url": app_base_url + SUCCESS_PATH,
        "cancel_url": app_base_url + CANCEL_PATH,
        "metadata": metadata,
    }
    if item.mode == "subscription":
        params["subscription_data"] = {"metadata": metadata}
        if item.trial_days:
            params["subscription_data"]["trial_period_days"] = item.trial_days
    else:
        params["payment_intent_data"] = {"metadata": metadata}
    if locale:
        params["locale"] = locale.split("-")[0].lower()
    try:
        customer = row.stripe_customer_id or await _create_customer(stripe_client, row)
        created = await stripe_client.v1.checkout.sessions.create_async(
            params={**params, "customer": customer}
        )
    except stripe.StripeError as exc:
        return PaymentProviderError(exc.user_message or str(exc))
    return CheckoutStarted(
        url=str(created.url),
        checkout_session_id=created.id,
        customer_id=customer,
        mode=item.mode,
        user_id=row.id,
        new_customer=row.stripe_customer_id is None,
    )


async def remember_stripe_customer(
    session: AsyncSession, *, started: CheckoutStarted, now: datetime
) -> CheckoutStarted:
    """Store a customer the checkout created: a short write after Stripe has answered.

    start_checkout only reads, so no lock (on SQLite: the one database write lock) is held
    while Stripe is called; this takes it for a single UPDATE.
    """
    if started.new_customer:
        locked = await find_user(session, UserRef(user_id=started.user_id), lock=True)
        if locked is not None and locked.stripe_customer_id is None:
            locked.stripe_customer_id = started.customer_id
            locked.updated_at = now
            await session.flush()
    return started


async def open_billing_portal(
    session: AsyncSession,
    *,
    user: UserRef,
    stripe_client: stripe.StripeClient | None,
    app_base_url: str,
    return_url: str | None = None,
) -> (
    BillingPortalOpened
    | UserNotFound
    | InvalidInput
    | NoStripeCustomer
    | PaymentsNotConfigured
    | PaymentProviderError
):
    """A Billing Portal session for the user's Stripe customer; it only reads the database."""
    if stripe_client is None:
        return PaymentsNotConfigured()
    target = return_url or app_base_url + PORTAL_RETURN_PATH
    if not _same_origin(target, app_base_url):
        # Otherwise the portal's "return" link could send a customer to any site.
        return InvalidInput(field="returnUrl", reason=f"must be a URL under {app_base_url}")
    row = await find_user(session, user)
    if row is None:
        return user.not_found()
    if row.stripe_customer_id is None:
        return NoStripeCustomer(user_id=row.id)
    try:
        portal = await stripe_client.v1.billing_portal.sessions.create_async(
            params={"customer": row.stripe_customer_id, "return_url": target}
        )
    except stripe.StripeError as exc:
        return PaymentProviderError(exc.user_message or str(exc))
    return BillingPortalOpened(url=str(portal.url), customer_id=row.stripe_customer_id)


def _checkout_item(
    catalog: Catalog, pack_code: str | None, tier_code: str | None, currency: str
) -> _Item | InvalidInput | UnknownTier:
    if (pack_code is None) == (tier_code is None):
        return InvalidInput(field="pack", reason="give exactly one of a credit pack or a tier")
    currency = currency.upper()
    if pack_code is not None:
        pack = catalog.credit_pack(pack_code)
        if pack is None:
            known = ", ".join(p.code for p in catalog.credit_packs)
            return InvalidInput(field="pack", reason=f"unknown credit pack; known: {known}")
        price = pack.stripe_price_ids.get(currency)
        if price is None:
            return InvalidInput(field="currency", reason=f"{pack.code} is not sold in {currency}")
        return _Item(mode="payment", price_id=price, metadata={"pack": pack.code})
    assert tier_code is not None
    tier = catalog.tier(tier_code)
    if tier is None:
        return UnknownTier(tier=tier_code, known=catalog.tier_codes)
    if not tier.is_paid:
        return InvalidInput(field="tier", reason=f"{tier.code} is free: nothing to check out")
    price = tier.stripe_price_ids.get(currency)
    if price is None:
        return InvalidInput(field="currency", reason=f"{tier.code} is not sold in {currency}")
    return _Item(
        mode="subscription",
        price_id=price,
        metadata={"tier": tier.code},
        trial_days=tier.trial_days,
    )


async def _create_customer(client: stripe.StripeClient, user: User) -> str:
    # Keyed by user and email: a retried or concurrent first checkout gets the same customer.
    digest = hashlib.sha256(user.email.encode()).hexdigest()[:16]
    customer = await client.v1.customers.create_async(
        params={"email": user.email, "metadata": {"user_id": str(user.id)}},
        options={"idempotency_key": f"customer-for-user-{user.id}-{digest}"},
    )
    return customer.id


def _same_origin(url: str, base: str) -> bool:
    target, origin = urlsplit(url), urlsplit(base)
    return (target.scheme, target.netloc) == (origin.scheme, origin.netloc)

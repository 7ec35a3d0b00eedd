"""Stripe events about money: read the object, find the user, call the payment resolvers.

Stripe's payload shape depends on the webhook endpoint's API version, so references are read
from the older fields (`invoice.subscription`, `invoice.charge`) or the newer ones
(`invoice.parent.subscription_details`, `line.pricing.price_details`), whichever is there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.billing import payments
from resolvers.catalog.model import Catalog, CreditPack
from resolvers.errors import Failure, StripeEventFailed
from resolvers.ledger.accounts import USERS, Account, lock_account, save_account
from resolvers.ledger.entries import Actor
from resolvers.models import Payment, parse_row_id
from resolvers.users import UserRef, normalize_email

ALLOWANCE_BILLING_REASONS = ("subscription_create", "subscription_cycle")


@dataclass(frozen=True)
class EventHandled:
    status: str  # processed | ignored
    effects: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class EventContext:
    session: AsyncSession
    event: dict[str, Any]
    catalog: Catalog
    now: datetime
    actor: Actor
    stripe_client: stripe.StripeClient | None

    @property
    def obj(self) -> dict[str, Any]:
        return self.event["data"]["object"]

    @property
    def created(self) -> datetime:
        return datetime.fromtimestamp(self.event["created"], UTC)

    def fail(self, reason: str) -> StripeEventFailed:
        return StripeEventFailed(event_id=self.event["id"], reason=reason)

    def ignore(self, note: str) -> EventHandled:
        return EventHandled(status="ignored", note=note)


Handler = Callable[[EventContext], Awaitable[EventHandled | StripeEventFailed]]


def object_id(value: Any) -> str | None:
    """A Stripe reference is an id, or the object itself when the field was expanded."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return value["id"]
    return None


async def checkout_completed(ctx: EventContext) -> EventHandled | StripeEventFailed:
    cs = ctx.obj
    metadata = as_dict(cs.get("metadata"))
    mode = cs.get("mode")
    if mode == "payment" and cs.get("payment_status") != "paid":
        return ctx.ignore(
            f"checkout {cs.get('id')} is {cs.get('payment_status')}: credits wait for"
            " checkout.session.async_payment_succeeded"
        )
    if mode not in ("payment", "subscription"):
        return ctx.ignore(f"checkout mode {mode!r} has no effects")
    customer = object_id(cs.get("customer"))
    user = await find_event_user(
        ctx,
        user_id=cs.get("client_reference_id") or metadata.get("user_id"),
        customer=customer,
        email=as_dict(cs.get("customer_details")).get("email") or cs.get("customer_email"),
    )
    if isinstance(user, StripeEventFailed):
        return user
    if mode == "subscription":
        # The tier comes with the customer.subscription.* events; this only links the account.
        subscription = object_id(cs.get("subscription"))
        # Only a user with no subscription yet is linked here: a replayed or late checkout of an
        # old subscription must not take the place of the current one. Later changes arrive as
        # customer.subscription.* events, which are ordered by their time.
        if subscription and user.stripe_subscription_id is None:
            user.stripe_subscription_id = subscription
            user.updated_at = ctx.now
        await save_account(ctx.session, user)
        return EventHandled(
            status="processed",
            effects=(f"user {user.id} linked to {user.stripe_customer_id} / {subscription}",),
        )
    pack = await _pack_for(ctx, cs, metadata)
    if isinstance(pack, StripeEventFailed):
        return pack
    recorded = await payments.record_credit_pack_purchase(
        ctx.session,
        user=user,
        checkout_session_id=cs["id"],
        pack=pack,
        amount=int(cs.get("amount_total") or 0),
        currency=str(cs.get("currency") or ctx.catalog.default_currency),
        payment_intent_id=object_id(cs.get("payment_intent")),
        actor=ctx.actor,
        now=ctx.now,
    )
    if isinstance(recorded, Failure):
        return ctx.fail(recorded.message)
    await save_account(ctx.session, user)  # a customer id linked above, if nothing else did
    return EventHandled(status="processed", effects=_payment_effects(recorded))


async def invoice_paid(ctx: EventContext) -> EventHandled | StripeEventFailed:
    inv = ctx.obj
    details = as_dict(as_dict(inv.get("parent")).get("subscription_details")) or as_dict(
        inv.get("subscription_details")
    )
    subscription = object_id(inv.get("subscription")) or object_id(details.get("subscription"))
    if subscription is None:
        return ctx.ignore("not a subscription invoice")
    # Only a period's first or recurring invoice pays for an allowance: a proration invoice of a
    # plan switch (often 0) would otherwise grant a whole month of the new tier each switch.
    reason = inv.get("billing_reason")
    if reason is not None and reason not in ALLOWANCE_BILLING_REASONS:
        return ctx.ignore(f"billing_reason {reason}: no allowance")
    # Proration lines ("unused time on Pro") come first and their period has already ended;
    # the allowance follows the recurring line.
    lines = [li for li in as_dict(inv.get("lines")).get("data") or [] if not _is_proration(li)]
    priced = [(line, ctx.catalog.tier_for_price(_line_price(line) or "")) for line in lines]
    line, tier = next(((li, t) for li, t in priced if t is not None), ({}, None))
    if tier is None:
        prices = ", ".join(str(_line_price(li)) for li in lines) or "none"
        return ctx.fail(f"no line of invoice {inv.get('id')} has a tier's price (prices: {prices})")
    user = await find_event_user(
        ctx,
        user_id=as_dict(details.get("metadata")).get("user_id"),
        customer=object_id(inv.get("customer")),
        subscription=subscription,
        email=inv.get("customer_email"),
        idempotency_key=payments.invoice_key(inv["id"]),
    )
    if isinstance(user, StripeEventFailed):
        return user
    recorded = await payments.record_subscription_payment(
        ctx.session,
        user=user,
        invoice_id=inv["id"],
        tier=tier,
        amount=int(inv.get("amount_paid") or 0),
        currency=str(inv.get("currency") or ctx.catalog.default_currency),
        period_end=timestamp(as_dict(line.get("period")).get("end")),
        payment_intent_id=object_id(inv.get("payment_intent")),
        charge_id=object_id(inv.get("charge")),
        actor=ctx.actor,
        now=ctx.now,
    )
    if isinstance(recorded, Failure):
        return ctx.fail(recorded.message)
    await save_account(ctx.session, user)  # a customer id linked above, if nothing else did
    return EventHandled(status="processed", effects=_payment_effects(recorded))


def _is_proration(line: Any) -> bool:
    line = as_dict(line)
    parent = as_dict(as_dict(line.get("parent")).get("subscription_item_details"))
    return bool(line.get("proration") or parent.get("proration"))


async def charge_refunded(ctx: EventContext) -> EventHandled | StripeEventFailed:
    charge = ctx.obj
    payment = await _payment_for(ctx, charge.get("id"), charge)
    if isinstance(payment, StripeEventFailed):
        return payment
    result = await payments.refund_payment(
        ctx.session,
        payment_id=payment.id,
        amount_refunded=int(charge.get("amount_refunded") or 0),
        charge_id=charge.get("id"),
        actor=ctx.actor,
        now=ctx.now,
    )
    return _taken_back(ctx, result)


async def dispute_created(ctx: EventContext) -> EventHandled | StripeEventFailed:
    dispute = ctx.obj
    payment = await _payment_for(ctx, object_id(dispute.get("charge")), dispute)
    if isinstance(payment, StripeEventFailed):
        return payment
    result = await payments.dispute_payment(
        ctx.session,
        payment_id=payment.id,
        disputed_amount=int(dispute.get("amount") or 0),
        dispute_id=str(dispute.get("id")),
        charge_id=object_id(dispute.get("charge")),
        actor=ctx.actor,
        now=ctx.now,
    )
    return _taken_back(ctx, result)


async def find_event_user(
    ctx: EventContext,
    *,
    user_id: Any = None,
    customer: str | None = None,
    subscription: str | None = None,
    email: str | None = None,
    idempotency_key: str | None = None,
) -> Account | StripeEventFailed:
    """By our id (client_reference_id, metadata), else customer, subscription, email; locked.

    Locked once, here: the payment and ledger resolvers are handed the account. The key the
    effects will use is looked up by the same statement. A customer id linked here is written
    by the next save of the account.
    """
    user = None
    if (row_id := parse_row_id(user_id)) is not None:
        user = await lock_account(
            ctx.session, UserRef(user_id=row_id), idempotency_key=idempotency_key
        )
    if user is None:
        found = await _user_id_by(ctx.session, None, customer, subscription, email)
        if found is None and email is None and customer and ctx.stripe_client is not None:
            try:
                remote = await ctx.stripe_client.v1.customers.retrieve_async(customer)
            except stripe.StripeError as exc:
                return ctx.fail(
                    f"fetching customer {customer} from Stripe: {exc.user_message or exc}"
                )
            email = getattr(remote, "email", None)
            found = await _user_id_by(ctx.session, None, None, None, email)
        if found is None:
            return ctx.fail(
                f"no user for Stripe customer {customer or '-'} (user id {user_id or '-'},"
                f" email {email or '-'}); create the user, then replay {ctx.event['id']}"
            )
        user = await lock_account(
            ctx.session, UserRef(user_id=found), idempotency_key=idempotency_key
        )
        assert user is not None, "a user found in this transaction is still there"
    if customer and user.stripe_customer_id is None:
        taken = await ctx.session.execute(
            select(USERS.c.id).where(USERS.c.stripe_customer_id == customer)
        )
        if taken.scalar_one_or_none() is None:
            user.stripe_customer_id = customer
            user.updated_at = ctx.now
    return user


async def _user_id_by(
    session: AsyncSession,
    user_id: Any,
    customer: str | None,
    subscription: str | None,
    email: str | None,
) -> int | None:
    conditions = []
    if (row_id := parse_row_id(user_id)) is not None:
        conditions.append(USERS.c.id == row_id)
    if customer:
        conditions.append(USERS.c.stripe_customer_id == customer)
    if subscription:
        conditions.append(USERS.c.stripe_subscription_id == subscription)
    if isinstance(email, str) and email:
        conditions.append(USERS.c.email == normalize_email(email))
    for condition in conditions:
        stmt = select(USERS.c.id).where(condition).order_by(USERS.c.id).limit(1)
        if (found := (await session.execute(stmt)).scalar_one_or_none()) is not None:
            return found
    return None


async def _pack_for(
    ctx: EventContext, cs: dict[str, Any], metadata: dict[str, Any]
) -> CreditPack | StripeEventFailed:
    """metadata.pack (set by our checkout) first; else the line items' prices via the catalog."""
    if code := metadata.get("pack"):
        pack = ctx.catalog.credit_pack(str(code))
        return pack or ctx.fail(f"metadata.pack {code!r} is not a credit pack of the catalog")
    items = as_dict(cs.get("line_items")).get("data")
    if items is None and ctx.stripe_client is not None:
        # Checkout events leave line items out unless expanded; ask Stripe for them.
        try:
            listed = await ctx.stripe_client.v1.checkout.sessions.line_items.list_async(cs["id"])
        except stripe.StripeError as exc:
            return ctx.fail(f"fetching line items of {cs['id']}: {exc.user_message or exc}")
        items = [item.to_dict() for item in listed.data]
    prices = [object_id(as_dict(item).get("price")) for item in items or []]
    for price in prices:
        if price and (pack := ctx.catalog.pack_for_price(price)):
            return pack
    return ctx.fail(f"checkout {cs.get('id')}: no metadata.pack and no pack price in {prices}")


async def _payment_for(
    ctx: EventContext, charge_id: str | None, obj: dict[str, Any]
) -> Payment | StripeEventFailed:
    payment_intent = object_id(obj.get("payment_intent"))
    payment = await payments.find_payment_for_charge(
        ctx.session,
        charge_id=charge_id,
        payment_intent_id=payment_intent,
        invoice_id=object_id(obj.get("invoice")),
    )
    if payment is None:
        return ctx.fail(
            f"no payment for charge {charge_id} (payment intent {payment_intent});"
            " replay once its purchase event is processed"
        )
    return payment


def _taken_back(
    ctx: EventContext, result: payments.CreditsTakenBack | Failure
) -> EventHandled | StripeEventFailed:
    if isinstance(result, Failure):
        return ctx.fail(result.message)
    payment = result.payment
    effect = (
        f"payment {payment.id} {payment.status}: took back {result.revoked} credits"
        + (f" (ledger event {result.event.id})" if result.event else "")
        + f", {result.unrecovered} already spent;"
        f" totals revoked {payment.credits_revoked}, unrecovered {payment.credits_unrecovered}"
    )
    return EventHandled(status="processed", effects=(effect,))


def _payment_effects(recorded: payments.PaymentRecorded) -> tuple[str, ...]:
    payment = recorded.payment
    verb = "recorded" if recorded.created else "already recorded, nothing changed"
    effects = [f"payment {payment.id} ({payment.stripe_object_id}) {verb}"]
    for event in recorded.grant_events:
        effects.append(
            f"grant_ai_credits: {event.amount} credits, ledger event {event.id},"
            f" balance after {event.balance_after}"
        )
    return tuple(effects)


def _line_price(line: dict[str, Any]) -> str | None:
    return (
        object_id(line.get("price"))
        or object_id(line.get("plan"))
        or object_id(as_dict(as_dict(line.get("pricing")).get("price_details")).get("price"))
    )


def timestamp(value: Any) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}

"""Stripe events about money: paid checkouts and invoices, refunds, disputes.

Each handler reads the object, locks the user once (`find_event_user`, or the payment's owner)
and hands the locked account to the payment and refund resolvers. Stripe's payload shape
depends on the webhook endpoint's API version, so references are read from the older fields
(`invoice.subscription`, `invoice.charge`) or the newer ones
(`invoice.parent.subscription_details`, `line.pricing.price_details`), whichever is there.
"""

from __future__ import annotations

from typing import Any

import stripe

from resolvers.billing import payments, refunds
from resolvers.billing.payloads import (
    EventContext,
    EventHandled,
    as_dict,
    find_event_user,
    object_id,
    timestamp,
)
from resolvers.catalog.model import CreditPack
from resolvers.errors import Failure, StripeEventFailed, UserNotFound
from resolvers.ledger.accounts import Account, lock_account, save_account
from resolvers.models import Payment
from resolvers.users import UserRef

ALLOWANCE_BILLING_REASONS = ("subscription_create", "subscription_cycle")


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
        account=user,
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
        account=user,
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
    found = await _payment_for(ctx, charge.get("id"), charge)
    if isinstance(found, StripeEventFailed):
        return found
    payment, owner = found
    result = await refunds.refund_payment(
        ctx.session,
        account=owner,
        payment_id=payment.id,
        amount_refunded=int(charge.get("amount_refunded") or 0),
        charge_id=charge.get("id"),
        actor=ctx.actor,
        now=ctx.now,
    )
    return _taken_back(ctx, result)


async def dispute_created(ctx: EventContext) -> EventHandled | StripeEventFailed:
    dispute = ctx.obj
    found = await _payment_for(ctx, object_id(dispute.get("charge")), dispute)
    if isinstance(found, StripeEventFailed):
        return found
    payment, owner = found
    result = await refunds.dispute_payment(
        ctx.session,
        account=owner,
        payment_id=payment.id,
        disputed_amount=int(dispute.get("amount") or 0),
        dispute_id=str(dispute.get("id")),
        charge_id=object_id(dispute.get("charge")),
        actor=ctx.actor,
        now=ctx.now,
    )
    return _taken_back(ctx, result)


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
) -> tuple[Payment, Account] | StripeEventFailed:
    """The payment a charge or dispute is about, and its owner: the event's one user lock."""
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
    owner = await lock_account(ctx.session, UserRef(user_id=payment.user_id))
    if owner is None:
        return ctx.fail(UserNotFound(user_id=payment.user_id).message)
    return payment, owner


def _taken_back(
    ctx: EventContext, result: refunds.CreditsTakenBack | Failure
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

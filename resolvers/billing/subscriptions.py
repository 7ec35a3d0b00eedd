"""Subscription state from Stripe: the tier its price buys, its status, and event ordering.

An event older than the state already applied changes nothing. Stripe's `created` has whole
seconds, so a tie is broken by fetching the subscription when a client is configured, else by
the lifecycle: the later status wins.
"""

from __future__ import annotations

from typing import Any

import stripe

from resolvers.billing.payloads import (
    EventContext,
    EventHandled,
    as_dict,
    find_event_user,
    object_id,
    timestamp,
)
from resolvers.catalog.model import Tier
from resolvers.errors import Failure, StripeEventFailed
from resolvers.kinds import SubscriptionStatus, is_paying
from resolvers.ledger import tiers
from resolvers.ledger.accounts import save_account
from resolvers.ledger.changes import record_change

# Where a subscription can go next: on a same-second tie the later status is the truer one.
LIFECYCLE = tuple(SubscriptionStatus)


async def subscription_changed(ctx: EventContext) -> EventHandled | StripeEventFailed:
    """customer.subscription.created|updated|deleted: tier, status, trial and period end."""
    sub = ctx.obj
    metadata = as_dict(sub.get("metadata"))
    user = await find_event_user(
        ctx,
        user_id=metadata.get("user_id"),
        customer=object_id(sub.get("customer")),
        subscription=sub.get("id"),
    )
    if isinstance(user, StripeEventFailed):
        return user
    status = (
        SubscriptionStatus.CANCELED
        if ctx.event["type"].endswith(".deleted")
        else str(sub.get("status"))
    )
    last = user.subscription_event_at
    if last is not None and ctx.created < last:
        return ctx.ignore(f"older than the subscription state applied (from {last.isoformat()})")
    if user.stripe_subscription_id not in (None, sub.get("id")) and not is_paying(status):
        return ctx.ignore(f"{sub.get('id')} is not the user's current subscription")
    if last is not None and ctx.created == last:
        # Stripe's `created` has whole seconds: a tie cannot be ordered by time.
        if ctx.stripe_client is not None:
            try:
                latest = await ctx.stripe_client.v1.subscriptions.retrieve_async(sub["id"])
            except stripe.StripeError as exc:
                return ctx.fail(f"fetching {sub['id']} from Stripe: {exc.user_message or exc}")
            sub = latest.to_dict()
            status = str(sub.get("status"))
        elif _rank(status) < _rank(user.subscription_status):
            return ctx.ignore(
                f"same second as the applied {user.subscription_status!r} state, which is later"
                f" in the lifecycle than {status!r}"
            )
    price_id = _subscription_price(sub)
    tier: Tier | None = None
    if is_paying(status):
        tier = ctx.catalog.tier_for_price(price_id or "")
        if tier is None:
            return ctx.fail(f"price {price_id} of {sub.get('id')} is not a tier of the catalog")
    elif (
        status != SubscriptionStatus.INCOMPLETE
    ):  # incomplete: the first payment is pending, nothing changes
        tier = ctx.catalog.default_tier
    # Written before set_tier: its allowance check must see the user as billed by Stripe.
    user.stripe_subscription_id = sub.get("id")
    user.subscription_status = status
    user.subscription_price_id = price_id
    user.subscription_period_end = timestamp(sub.get("current_period_end")) or timestamp(
        _first_item(sub).get("current_period_end")
    )
    user.trial_ends_at = timestamp(sub.get("trial_end"))
    user.subscription_event_at = ctx.created
    user.updated_at = ctx.now
    reason = f"Stripe subscription {sub.get('id')} {status}"
    changed = None
    if tier is not None:
        # Handed the locked account: set_tier saves the subscription fields with the tier.
        result = await tiers.set_tier(
            ctx.session,
            user=user,
            tier=tier.code,
            reason=reason,
            actor=ctx.actor,
            now=ctx.now,
            catalog=ctx.catalog,
            action="subscription_updated",
        )
        if isinstance(result, Failure):
            return ctx.fail(result.message)
        changed = result.change
    else:
        await save_account(ctx.session, user)
    if changed is None:
        # The tier stayed; support still looks for this line after replaying an event.
        record_change(
            ctx.session,
            action="subscription_updated",
            request_id=ctx.actor.request_id,
            user_id=user.id,
            email=user.email,
            tier=user.tier,
            subscription=sub.get("id"),
            status=status,
            source="stripe",
            actor=ctx.actor.name,
        )
    moved = f"tier {changed.from_tier} → {changed.to_tier}" if changed else f"tier {user.tier}"
    return EventHandled(status="processed", effects=(f"{reason}: {moved}",))


def _subscription_price(sub: dict[str, Any]) -> str | None:
    return object_id(_first_item(sub).get("price")) or object_id(sub.get("plan"))


def _first_item(sub: dict[str, Any]) -> dict[str, Any]:
    items = as_dict(sub.get("items")).get("data") or []
    return as_dict(items[0]) if items else {}


def _rank(status: str | None) -> int:
    return LIFECYCLE.index(status) if status in LIFECYCLE else -1

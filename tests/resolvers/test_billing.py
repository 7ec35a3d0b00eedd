"""Stripe events → effects (purchases, subscriptions, invoices, refunds), replay, Checkout, Portal.

Events go through the webhook's own store-then-act path without HTTP (tests/gateway covers the
route); Stripe API calls go to a fake Stripe server on loopback.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from gateway.runtime import Runtime, build_stripe_client
from resolvers.billing import checkout, deliveries, payments
from resolvers.billing import events as billing
from resolvers.errors import (
    InvalidInput,
    NoStripeCustomer,
    PaymentNotFound,
    PaymentProviderError,
    PaymentsNotConfigured,
    StripeEventFailed,
)
from resolvers.ledger import credits
from resolvers.ledger.entries import Actor
from resolvers.models import AnalyticsEvent, CreditEvent, CreditGrant, Payment, StripeEvent, User
from resolvers.users import UserRef
from tests.factories import make_user
from tests.fakes import stripe_events as ev
from tests.fakes.stripe_server import API_KEY, FakeStripe, running_fake_stripe

# The stripe library's httpx client posts its form body with `data=`, which httpx deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
BASE_URL = "https://app.example.com"
USAGE = Actor(name="ai-backend", source="usage", request_id="req-usage")


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeStripe]:
    with running_fake_stripe() as fake:
        yield fake


@pytest.fixture
async def fake_stripe(runtime: Runtime, fake_server: FakeStripe) -> AsyncIterator[FakeStripe]:
    """The fake Stripe, emptied, and the runtime's Stripe client pointed at it."""
    fake_server.reset()
    settings = runtime.settings.__class__(
        database_url=runtime.settings.database_url,
        stripe_api_key=API_KEY,
        stripe_api_base=fake_server.base_url,
    )
    runtime.stripe, http = build_stripe_client(settings)
    yield fake_server
    runtime.stripe = None
    await http.close_async()


async def deliver(
    runtime: Runtime, event: dict
) -> deliveries.StripeEventOutcome | StripeEventFailed:
    return await deliveries.receive_stripe_event(
        runtime.db,
        event=event,
        catalog=runtime.catalog,
        now=runtime.clock(),
        request_id="req-stripe",
        stripe_client=runtime.stripe,
    )


async def replay_stripe_event(runtime: Runtime, event_id: str, request_id: str) -> object:
    return await deliveries.replay_stripe_event(
        runtime.db,
        event_id=event_id,
        catalog=runtime.catalog,
        now=runtime.clock(),
        request_id=request_id,
        stripe_client=runtime.stripe,
    )


async def balances(runtime: Runtime, user_id: int) -> tuple[int, int, int]:
    """(balance on the row, unexpired grants' remaining, sum of the ledger): always equal."""
    now = runtime.clock()
    async with runtime.db.read() as s:
        row = (await s.execute(select(User.credits_available).where(User.id == user_id))).one()
        remaining = (
            await s.execute(
                select(func.coalesce(func.sum(CreditGrant.remaining), 0)).where(
                    CreditGrant.user_id == user_id,
                    CreditGrant.expires_at.is_(None) | (CreditGrant.expires_at > now),
                )
            )
        ).scalar_one()
        ledger = (
            await s.execute(
                select(func.coalesce(func.sum(CreditEvent.amount), 0)).where(
                    CreditEvent.user_id == user_id
                )
            )
        ).scalar_one()
    return row[0], remaining, ledger


async def load(runtime: Runtime, model: type, *conditions) -> list:
    async with runtime.db.read() as s:
        return list((await s.execute(select(model).where(*conditions))).scalars())


async def user_row(runtime: Runtime, user_id: int) -> User:
    return (await load(runtime, User, User.id == user_id))[0]


def at(runtime: Runtime, **delta: float) -> int:
    return int((runtime.clock() + timedelta(**delta)).timestamp())


# --- credit-pack purchases -------------------------------------------------------------------


async def test_paid_checkout_records_payment_grants_pack_and_tracks_purchase(runtime) -> None:
    user = await make_user(runtime, credits_granted=10)
    session = ev.checkout_session(user_id=user.id, pack="credits_500", amount=2000)
    event = ev.stripe_event("checkout.session.completed", session)
    outcome = await deliver(runtime, event)
    assert isinstance(outcome, deliveries.StripeEventOutcome) and outcome.status == "processed"
    assert await balances(runtime, user.id) == (510, 510, 510)
    [payment] = await load(runtime, Payment)
    assert (payment.kind, payment.stripe_object_id, payment.amount, payment.currency) == (
        "credit_pack",
        session["id"],
        2000,
        "EUR",
    )
    assert (payment.pack_code, payment.credits_granted, payment.status) == (
        "credits_500",
        500,
        "paid",
    )
    assert payment.stripe_payment_intent_id == session["payment_intent"]
    [grant] = await load(runtime, CreditGrant, CreditGrant.payment_id == payment.id)
    assert grant.is_purchased and grant.expires_at is None and grant.source == "stripe"
    [ledger] = await load(runtime, CreditEvent, CreditEvent.payment_id == payment.id)
    assert (ledger.kind, ledger.amount, ledger.balance_after) == ("grant", 500, 510)
    assert ledger.actor == f"stripe:{event['id']}" and ledger.request_id == "req-stripe"
    assert ledger.idempotency_key == f"stripe:checkout:{session['id']}"
    [tracked] = await load(runtime, AnalyticsEvent)
    assert tracked.name == "credit_purchase_completed" and tracked.user_id == user.id
    assert tracked.properties["pack"] == "credits_500" and tracked.properties["credits"] == 500
    assert any("grant_ai_credits: 500 credits" in e for e in outcome.effects)


async def test_sibling_events_of_one_checkout_grant_once(runtime) -> None:
    user = await make_user(runtime)
    pending = ev.checkout_session(user_id=user.id, payment_status="unpaid")
    waiting = await deliver(runtime, ev.stripe_event("checkout.session.completed", pending))
    assert waiting.status == "ignored" and "async_payment_succeeded" in waiting.note
    assert await balances(runtime, user.id) == (0, 0, 0)
    paid = {**pending, "payment_status": "paid"}
    for event_type in ("checkout.session.async_payment_succeeded", "checkout.session.completed"):
        outcome = await deliver(runtime, ev.stripe_event(event_type, paid))
        assert outcome.status == "processed"
    assert await balances(runtime, user.id) == (100, 100, 100)
    assert len(await load(runtime, Payment)) == 1
    assert len(await load(runtime, AnalyticsEvent)) == 1


async def test_pack_falls_back_to_line_item_prices(runtime) -> None:
    user = await make_user(runtime)
    session = ev.checkout_session(
        user_id=user.id, pack=None, line_item_prices=["price_credits_2000_usd"], currency="usd"
    )
    await deliver(runtime, ev.stripe_event("checkout.session.completed", session))
    [payment] = await load(runtime, Payment)
    assert (payment.pack_code, payment.currency) == ("credits_2000", "USD")
    assert await balances(runtime, user.id) == (2000, 2000, 2000)


async def test_line_items_are_fetched_from_stripe_when_not_in_the_event(
    runtime, fake_stripe
) -> None:
    user = await make_user(runtime)
    created = await runtime.stripe.v1.checkout.sessions.create_async(
        params={
            "mode": "payment",
            "success_url": "https://app.example.com/ok",
            "line_items": [{"price": "price_credits_500_eur", "quantity": 1}],
        }
    )
    session = ev.checkout_session(user_id=user.id, pack=None, session_id=created.id)
    await deliver(runtime, ev.stripe_event("checkout.session.completed", session))
    assert fake_stripe.calls_to(f"/v1/checkout/sessions/{created.id}/line_items")
    assert await balances(runtime, user.id) == (500, 500, 500)


async def test_user_found_by_customer_email_gets_the_customer_linked(runtime) -> None:
    user = await make_user(runtime)
    session = ev.checkout_session(user_id=None, customer="cus_email1", email=user.email.upper())
    await deliver(runtime, ev.stripe_event("checkout.session.completed", session))
    assert (await user_row(runtime, user.id)).stripe_customer_id == "cus_email1"
    again = ev.checkout_session(user_id=None, customer="cus_email1")
    await deliver(runtime, ev.stripe_event("checkout.session.completed", again))
    assert await balances(runtime, user.id) == (200, 200, 200)


async def test_unknown_pack_fails_and_leaves_no_payment(runtime) -> None:
    user = await make_user(runtime)
    session = ev.checkout_session(user_id=user.id, pack="credits_9000")
    failed = await deliver(runtime, ev.stripe_event("checkout.session.completed", session))
    assert isinstance(failed, StripeEventFailed) and "credits_9000" in failed.reason
    assert await load(runtime, Payment) == []
    [stored] = await load(runtime, StripeEvent)
    assert (stored.status, stored.attempts) == ("failed", 1) and "credits_9000" in stored.last_error


async def test_other_event_types_are_stored_as_ignored(runtime) -> None:
    outcome = await deliver(
        runtime, ev.stripe_event("customer.created", {"id": "cus_1", "object": "customer"})
    )
    assert outcome.status == "ignored"
    [stored] = await load(runtime, StripeEvent)
    assert (stored.status, stored.stripe_customer_id) == ("ignored", "cus_1")


# --- subscriptions ---------------------------------------------------------------------------


def sub_event(runtime, event_type: str, created: int, *, price="price_pro_monthly_eur", **kw):
    sub = ev.subscription(
        sub_id=kw.pop("sub_id", "sub_1"),
        customer=kw.pop("customer", "cus_sub"),
        price=price,
        period_end=runtime.clock() + timedelta(days=30),
        **kw,
    )
    return ev.stripe_event(event_type, sub, created=created)


async def test_subscription_sets_tier_status_and_period_without_calendar_allowance(
    runtime,
) -> None:
    user = await make_user(runtime)
    trial_end = runtime.clock() + timedelta(days=14)
    event = sub_event(
        runtime,
        "customer.subscription.created",
        at(runtime),
        user_id=user.id,
        status="trialing",
        trial_end=trial_end,
    )
    assert (await deliver(runtime, event)).status == "processed"
    row = await user_row(runtime, user.id)
    assert (row.tier, row.subscription_status, row.stripe_subscription_id) == (
        "pro",
        "trialing",
        "sub_1",
    )
    assert row.stripe_customer_id == "cus_sub" and row.trial_ends_at == trial_end
    assert row.subscription_price_id == "price_pro_monthly_eur"
    assert row.subscription_period_end == runtime.clock() + timedelta(days=30)
    # Billed by Stripe: the allowance comes with the paid invoice, not the calendar.
    assert await balances(runtime, user.id) == (0, 0, 0)


async def test_older_subscription_event_is_recorded_as_ignored(runtime) -> None:
    user = await make_user(runtime)
    newer = sub_event(runtime, "customer.subscription.updated", at(runtime), user_id=user.id)
    older = sub_event(
        runtime,
        "customer.subscription.updated",
        at(runtime, minutes=-5),
        user_id=user.id,
        price="price_team_monthly_eur",
    )
    await deliver(runtime, newer)
    late = await deliver(runtime, older)
    assert late.status == "ignored" and "older" in late.note
    assert (await user_row(runtime, user.id)).tier == "pro"
    [stored] = await load(runtime, StripeEvent, StripeEvent.id == older["id"])
    assert stored.status == "ignored" and "older" in stored.last_error


async def test_upgrade_then_downgrade_follows_the_price(runtime, caplog) -> None:
    user = await make_user(runtime)
    caplog.set_level(logging.INFO, logger="entitlements.changes")
    steps = [
        ("customer.subscription.created", "price_pro_monthly_eur", "pro"),
        ("customer.subscription.updated", "price_team_monthly_eur", "team"),
        ("customer.subscription.updated", "price_pro_monthly_eur", "pro"),
    ]
    for seconds, (event_type, price, tier) in enumerate(steps):
        event = sub_event(runtime, event_type, at(runtime, seconds=seconds), price=price)
        event["data"]["object"]["metadata"] = {"user_id": str(user.id)}
        await deliver(runtime, event)
        assert (await user_row(runtime, user.id)).tier == tier
    lines = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("user_id") == user.id]
    moves = [(f["from_tier"], f["to_tier"]) for f in lines if f["action"] == "subscription_updated"]
    assert moves == [("free", "pro"), ("pro", "team"), ("team", "pro")]


async def test_cancel_and_unpaid_move_to_the_free_tier(runtime) -> None:
    user = await make_user(runtime, tier="team")
    await deliver(
        runtime,
        sub_event(runtime, "customer.subscription.updated", at(runtime), user_id=user.id),
    )
    await deliver(
        runtime,
        sub_event(
            runtime,
            "customer.subscription.updated",
            at(runtime, seconds=5),
            user_id=user.id,
            status="unpaid",
        ),
    )
    assert (await user_row(runtime, user.id)).tier == "free"
    await deliver(
        runtime,
        sub_event(
            runtime, "customer.subscription.updated", at(runtime, seconds=9), user_id=user.id
        ),
    )
    deleted = sub_event(
        runtime, "customer.subscription.deleted", at(runtime, seconds=10), status="active"
    )
    await deliver(runtime, deleted)  # found by customer id this time
    row = await user_row(runtime, user.id)
    assert (row.tier, row.subscription_status) == ("free", "canceled")
    # No longer billed by Stripe: the free tier's calendar allowance is back.
    assert await balances(runtime, user.id) == (50, 50, 50)


async def test_same_second_tie_goes_to_the_later_lifecycle_status(runtime) -> None:
    user = await make_user(runtime)
    second = at(runtime)
    canceled = sub_event(
        runtime, "customer.subscription.deleted", second, user_id=user.id, status="canceled"
    )
    active = sub_event(runtime, "customer.subscription.updated", second, user_id=user.id)
    await deliver(runtime, canceled)
    tie = await deliver(runtime, active)
    assert tie.status == "ignored" and "lifecycle" in tie.note
    assert (await user_row(runtime, user.id)).subscription_status == "canceled"


async def test_same_second_tie_fetches_the_subscription_when_stripe_is_configured(
    runtime, fake_stripe
) -> None:
    user = await make_user(runtime)
    second = at(runtime)
    await deliver(
        runtime,
        sub_event(runtime, "customer.subscription.updated", second, user_id=user.id),
    )
    fake_stripe.subscriptions["sub_1"] = ev.subscription(
        sub_id="sub_1", customer="cus_sub", price="price_team_monthly_eur", user_id=user.id
    )
    stale = sub_event(runtime, "customer.subscription.updated", second, user_id=user.id)
    assert (await deliver(runtime, stale)).status == "processed"
    assert fake_stripe.calls_to("/v1/subscriptions/sub_1")
    assert (await user_row(runtime, user.id)).tier == "team"


# --- invoices --------------------------------------------------------------------------------


async def test_paid_invoice_grants_the_allowance_until_the_period_end(runtime) -> None:
    user = await make_user(runtime)
    await deliver(
        runtime, sub_event(runtime, "customer.subscription.created", at(runtime), user_id=user.id)
    )
    period_end = runtime.clock() + timedelta(days=30)
    invoice = ev.invoice(
        customer="cus_sub",
        subscription_id="sub_1",
        price="price_pro_monthly_eur",
        period_start=runtime.clock(),
        period_end=period_end,
        payment_intent="pi_inv1",
    )
    event = ev.stripe_event("invoice.paid", invoice)
    assert (await deliver(runtime, event)).status == "processed"
    [payment] = await load(runtime, Payment)
    assert (payment.kind, payment.stripe_invoice_id, payment.tier_code) == (
        "subscription",
        invoice["id"],
        "pro",
    )
    assert (payment.amount, payment.credits_granted) == (1900, 1000)
    [grant] = await load(runtime, CreditGrant)
    assert (grant.amount, grant.expires_at, grant.is_purchased) == (1000, period_end, False)
    again = await replay_stripe_event(runtime, event["id"], "req-replay")
    assert again.replayed and await balances(runtime, user.id) == (1000, 1000, 1000)
    runtime.clock.now = period_end + timedelta(seconds=1)
    await runtime.db.write(
        lambda s: credits.grant_ai_credits(
            s,
            user=UserRef(user_id=user.id),
            amount=1,
            reason="nudge",
            actor=USAGE,
            now=runtime.clock(),
        )
    )
    assert await balances(runtime, user.id) == (1, 1, 1)


async def test_proration_invoices_grant_no_allowance_and_renewals_follow_the_new_plan(
    runtime,
) -> None:
    user = await make_user(runtime)
    await deliver(
        runtime, sub_event(runtime, "customer.subscription.created", at(runtime), user_id=user.id)
    )
    period_end = runtime.clock() + timedelta(days=30)
    switch = ev.invoice(
        customer="cus_sub", subscription_id="sub_1", price="price_team_monthly_eur",
        period_start=runtime.clock(), period_end=period_end, amount_paid=0,
    )  # fmt: skip
    switch["billing_reason"] = "subscription_update"
    outcome = await deliver(runtime, ev.stripe_event("invoice.paid", switch))
    assert outcome.status == "ignored"
    assert await balances(runtime, user.id) == (0, 0, 0)

    renewal = ev.invoice(
        customer="cus_sub", subscription_id="sub_1", price="price_team_monthly_eur",
        period_start=runtime.clock(), period_end=period_end, amount_paid=5900,
    )  # fmt: skip
    # Stripe lists the unused time on the old plan first; its period is already over.
    unused = {**renewal["lines"]["data"][0], "id": "il_unused", "proration": True}
    unused["price"] = {"id": "price_pro_monthly_eur", "object": "price"}
    unused["period"] = {"start": at(runtime, days=-20), "end": at(runtime, days=-1)}
    renewal["lines"]["data"].insert(0, unused)
    assert (await deliver(runtime, ev.stripe_event("invoice.paid", renewal))).status == (
        "processed"
    )
    [grant] = await load(runtime, CreditGrant)
    assert (grant.amount, grant.expires_at) == (5000, period_end)


async def test_replayed_checkout_of_an_old_subscription_does_not_relink_the_user(runtime) -> None:
    user = await make_user(runtime)
    await deliver(
        runtime,
        sub_event(runtime, "customer.subscription.created", at(runtime), user_id=user.id,
                  sub_id="sub_new"),
    )  # fmt: skip
    old_checkout = ev.checkout_session(
        user_id=user.id, pack=None, mode="subscription", subscription="sub_old", customer="cus_sub"
    )
    await deliver(runtime, ev.stripe_event("checkout.session.completed", old_checkout))
    assert (await user_row(runtime, user.id)).stripe_subscription_id == "sub_new"


async def test_invoice_without_subscription_is_ignored(runtime) -> None:
    invoice = {"id": "in_oneoff", "object": "invoice", "customer": "cus_x", "lines": {"data": []}}
    outcome = await deliver(runtime, ev.stripe_event("invoice.paid", invoice))
    assert outcome.status == "ignored"


# --- refunds and disputes --------------------------------------------------------------------


async def buy(runtime: Runtime, user: User, pack: str = "credits_100", amount: int = 500):
    session = ev.checkout_session(user_id=user.id, pack=pack, amount=amount)
    await deliver(runtime, ev.stripe_event("checkout.session.completed", session))
    return session


async def spend(runtime: Runtime, user: User, amount: int) -> None:
    spent = await runtime.db.write(
        lambda s: credits.consume_credits(
            s,
            user=UserRef(user_id=user.id),
            amount=amount,
            reason="ai usage",
            actor=USAGE,
            now=runtime.clock(),
            catalog=runtime.catalog,
        )
    )
    assert isinstance(spent, credits.CreditChanged), spent


async def test_refund_after_partial_spend_records_what_could_not_be_taken_back(runtime) -> None:
    user = await make_user(runtime)
    session = await buy(runtime, user)
    await spend(runtime, user, 70)
    half = ev.charge(payment_intent=session["payment_intent"], amount=500, amount_refunded=250)
    await deliver(runtime, ev.stripe_event("charge.refunded", half))
    [payment] = await load(runtime, Payment)
    assert (payment.amount_refunded, payment.status) == (250, "partially_refunded")
    assert (payment.credits_revoked, payment.credits_unrecovered) == (30, 20)
    assert payment.stripe_charge_id == half["id"]
    assert await balances(runtime, user.id) == (0, 0, 0)
    full = {**half, "amount_refunded": 500, "refunded": True}
    await deliver(runtime, ev.stripe_event("charge.refunded", full))
    [payment] = await load(runtime, Payment)
    assert (payment.status, payment.credits_revoked, payment.credits_unrecovered) == (
        "refunded",
        30,
        70,
    )
    [revoke] = await load(runtime, CreditEvent, CreditEvent.kind == "revoke")
    assert (revoke.amount, revoke.balance_after, revoke.payment_id) == (-30, 0, payment.id)
    [grant] = await load(runtime, CreditGrant)
    assert revoke.allocations == [[grant.id, 30]] and grant.remaining == 0


async def test_refund_takes_only_from_the_refunded_payment(runtime) -> None:
    user = await make_user(runtime, credits_granted=40)
    session = await buy(runtime, user)
    refund = ev.charge(payment_intent=session["payment_intent"], amount=500, amount_refunded=500)
    event = ev.stripe_event("charge.refunded", refund)
    await deliver(runtime, event)
    assert await balances(runtime, user.id) == (40, 40, 40)
    await replay_stripe_event(runtime, event["id"], "req-replay")
    redelivered = ev.stripe_event("charge.refunded", refund)
    await deliver(runtime, redelivered)
    assert await balances(runtime, user.id) == (40, 40, 40)
    [payment] = await load(runtime, Payment)
    assert (payment.credits_revoked, payment.credits_unrecovered) == (100, 0)


async def test_dispute_takes_back_the_disputed_share(runtime) -> None:
    user = await make_user(runtime)
    session = await buy(runtime, user, pack="credits_500", amount=2000)
    opened = ev.dispute(
        charge_id="ch_disputed", payment_intent=session["payment_intent"], amount=1000
    )
    await deliver(runtime, ev.stripe_event("charge.dispute.created", opened))
    [payment] = await load(runtime, Payment)
    assert (payment.status, payment.credits_revoked, payment.stripe_charge_id) == (
        "disputed",
        250,
        "ch_disputed",
    )
    assert await balances(runtime, user.id) == (250, 250, 250)


async def test_refund_of_unknown_charge_fails_and_stays_replayable(runtime) -> None:
    refund = ev.charge(payment_intent="pi_unknown", amount=500, amount_refunded=500)
    failed = await deliver(runtime, ev.stripe_event("charge.refunded", refund))
    assert isinstance(failed, StripeEventFailed) and "pi_unknown" in failed.reason


# --- reading back ----------------------------------------------------------------------------


async def test_payment_lookup_by_any_id_reaches_its_grant_and_ledger_events(runtime) -> None:
    user = await make_user(runtime)
    session = await buy(runtime, user)
    [payment] = await load(runtime, Payment)
    async with runtime.db.read() as s:
        for ref in (str(payment.id), session["id"], session["payment_intent"]):
            found = await payments.find_payment(s, ref=ref)
            assert isinstance(found, payments.PaymentDetails) and found.payment.id == payment.id
            assert found.user.email == user.email
            assert [g.amount for g in found.grants] == [100]
            assert [(e.kind, e.amount) for e in found.events] == [("grant", 100)]
        assert await payments.find_payment(s, ref="cs_nope") == PaymentNotFound(ref="cs_nope")


async def test_stored_events_list_newest_first_by_status_with_a_cursor(runtime) -> None:
    for minutes in range(3):
        await deliver(
            runtime,
            ev.stripe_event("customer.created", {"id": f"cus_{minutes}", "object": "customer"}),
        )
        runtime.clock.advance(minutes=1)
    await deliver(
        runtime,
        ev.stripe_event(
            "charge.refunded", ev.charge(payment_intent="pi_x", amount=1, amount_refunded=1)
        ),
    )
    async with runtime.db.read() as s:
        everything = await billing.list_stripe_events(s, limit=10)
        failed = await billing.list_stripe_events(s, status="failed")
        first = await billing.list_stripe_events(s, status="ignored", limit=2)
        rest = await billing.list_stripe_events(s, status="ignored", after=first.events[-1].id)
        bad = await billing.list_stripe_events(s, status="lost")
    assert everything.events[0].type == "charge.refunded"
    assert [e.stripe_customer_id for e in everything.events[1:]] == ["cus_2", "cus_1", "cus_0"]
    assert [e.type for e in failed.events] == ["charge.refunded"]
    assert first.has_more and not rest.has_more
    assert [e.stripe_customer_id for e in first.events + rest.events] == ["cus_2", "cus_1", "cus_0"]
    assert isinstance(bad, InvalidInput)


async def test_signature_failures_are_counted(runtime) -> None:
    for reason in ("missing Stripe-Signature header", "timestamp outside the 300 s tolerance"):
        await runtime.db.write(
            lambda s, r=reason: billing.record_signature_failure(
                s, reason=r, request_id="req-sig", now=runtime.clock()
            )
        )
        runtime.clock.advance(hours=2)
    async with runtime.db.read() as s:
        assert await billing.count_signature_failures(s) == 2
        since = runtime.clock() - timedelta(hours=3)
        assert await billing.count_signature_failures(s, since=since) == 1


# --- Checkout and Billing Portal -------------------------------------------------------------


async def start(runtime: Runtime, user: User, **kw):
    """As the startCheckout mutation does it: read and call Stripe, then store a new customer."""
    async with runtime.db.read() as s:
        started = await checkout.start_checkout(
            s,
            user=UserRef(user_id=user.id),
            catalog=runtime.catalog,
            stripe_client=runtime.stripe,
            app_base_url=BASE_URL,
            now=runtime.clock(),
            **kw,
        )
    if not isinstance(started, checkout.CheckoutStarted):
        return started
    return await runtime.db.write(
        lambda s: checkout.remember_stripe_customer(s, started=started, now=runtime.clock())
    )


async def portal(runtime: Runtime, user: User, **kw):
    async with runtime.db.read() as s:
        return await checkout.open_billing_portal(
            s,
            user=UserRef(user_id=user.id),
            stripe_client=runtime.stripe,
            app_base_url=BASE_URL,
            **kw,
        )


async def test_pack_checkout_creates_the_customer_once_and_carries_our_ids(
    runtime, fake_stripe
) -> None:
    user = await make_user(runtime)
    started = await start(runtime, user, pack_code="credits_500", currency="usd")
    assert isinstance(started, checkout.CheckoutStarted) and started.mode == "payment"
    assert started.url.startswith("https://checkout.stripe.test/")
    [created] = fake_stripe.calls_to("/v1/customers")
    assert created.params == {"email": user.email, "metadata": {"user_id": str(user.id)}}
    assert created.idempotency_key.startswith(f"customer-for-user-{user.id}-")
    [call] = fake_stripe.calls_to("/v1/checkout/sessions")
    assert call.params["customer"] == started.customer_id
    assert call.params["client_reference_id"] == str(user.id)
    assert call.params["metadata"] == {"user_id": str(user.id), "pack": "credits_500"}
    assert call.params["line_items"] == {"0": {"price": "price_credits_500_usd", "quantity": "1"}}
    assert call.params["success_url"].startswith(BASE_URL + "/billing/success?session_id=")
    assert call.params["cancel_url"] == BASE_URL + "/billing/cancel"
    assert (await user_row(runtime, user.id)).stripe_customer_id == started.customer_id
    again = await start(runtime, user, tier_code="team")
    assert again.mode == "subscription" and again.customer_id == started.customer_id
    assert len(fake_stripe.calls_to("/v1/customers")) == 1
    sub_call = fake_stripe.calls_to("/v1/checkout/sessions")[-1]
    assert sub_call.params["metadata"]["tier"] == "team"
    assert sub_call.params["subscription_data"]["trial_period_days"] == "14"


async def test_checkout_refuses_what_cannot_be_bought(runtime, fake_stripe) -> None:
    user = await make_user(runtime)
    assert (await start(runtime, user, tier_code="free")).field == "tier"
    assert (await start(runtime, user, pack_code="credits_9")).field == "pack"
    assert (await start(runtime, user, pack_code="credits_100", currency="GBP")).field == "currency"
    assert (await start(runtime, user)).field == "pack"
    assert (await start(runtime, user, tier_code="gold")).code == "UNKNOWN_TIER"
    assert fake_stripe.calls == []


async def test_stripe_errors_come_back_as_payment_provider_error(runtime, fake_stripe) -> None:
    user = await make_user(runtime)
    fake_stripe.fail_next("/v1/checkout/sessions", 400, "No such price: 'price_pro_monthly_eur'")
    failed = await start(runtime, user, tier_code="pro")
    assert failed == PaymentProviderError("No such price: 'price_pro_monthly_eur'")
    assert failed.code == "PAYMENT_PROVIDER_ERROR"
    fake_stripe.fail_next("/v1/billing_portal/sessions", 400, "No configuration provided")
    await start(runtime, user, pack_code="credits_100")
    assert await portal(runtime, user) == PaymentProviderError("No configuration provided")


async def test_billing_portal_returns_to_the_app(runtime, fake_stripe) -> None:
    user = await make_user(runtime)
    assert await portal(runtime, user) == NoStripeCustomer(user_id=user.id)
    started = await start(runtime, user, pack_code="credits_100")
    opened = await portal(runtime, user)
    assert isinstance(opened, checkout.BillingPortalOpened)
    assert opened.url.startswith("https://billing.stripe.test/")
    call = fake_stripe.calls_to("/v1/billing_portal/sessions")[-1]
    assert call.params == {"customer": started.customer_id, "return_url": BASE_URL + "/billing"}
    await portal(runtime, user, return_url=BASE_URL + "/settings")
    assert fake_stripe.calls[-1].params["return_url"] == BASE_URL + "/settings"
    elsewhere = await portal(runtime, user, return_url="https://evil.example.net/")
    assert isinstance(elsewhere, InvalidInput) and elsewhere.field == "returnUrl"


async def test_without_an_api_key_payments_are_not_configured(runtime) -> None:
    user = await make_user(runtime)
    assert await start(runtime, user, pack_code="credits_100") == PaymentsNotConfigured()
    assert await portal(runtime, user) == PaymentsNotConfigured()

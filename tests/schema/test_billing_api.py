"""Billing over GraphQL: Checkout and Portal through a fake Stripe on loopback, stored webhook
events, replays, and the runbook's way from a payment to its grant and ledger events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest
import stripe

from gateway.runtime import build_stripe_client
from tests.factories import make_user
from tests.fakes import stripe_events as ev
from tests.fakes.stripe_server import API_KEY, FakeStripe, running_fake_stripe
from tests.schema.conftest import data_of, error_codes, user_token

SECRET = "whsec_graphql_tests"
CHECKOUT = """
mutation ($input: StartCheckoutInput!) {
  startCheckout(input: $input) {
    __typename
    ... on CheckoutSession { url mode customerId }
    ... on Error { code message }
  }
}
"""
PORTAL = """
mutation {
  openBillingPortal { __typename ... on BillingPortalSession { url } ... on Error { code } }
}
"""


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeStripe]:
    with running_fake_stripe() as fake:
        yield fake


@pytest.fixture
async def fake_stripe(runtime, fake_server) -> AsyncIterator[FakeStripe]:
    fake_server.reset()
    runtime.settings = replace(
        runtime.settings,
        stripe_api_key=API_KEY,
        stripe_api_base=fake_server.base_url,
        stripe_webhook_secrets=(SECRET,),
    )
    runtime.stripe, http = build_stripe_client(runtime.settings)
    yield fake_server
    runtime.stripe = None
    await http.close_async()


async def deliver(gql, event: dict) -> None:
    body = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(body, SECRET)
    response = await gql.http.post(
        "/api/billing/webhook",
        content=body,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )
    assert response.status_code in (200, 500), response.text


async def test_viewer_checks_out_a_pack_then_opens_the_portal(runtime, fake_stripe, gql) -> None:
    user = await make_user(runtime)
    token = user_token(user.id)
    no_customer = data_of(await gql(PORTAL, token=token))["openBillingPortal"]
    assert no_customer == {"__typename": "NoStripeCustomer", "code": "NO_STRIPE_CUSTOMER"}

    started = data_of(await gql(CHECKOUT, {"input": {"pack": "credits_100"}}, token=token))
    session = started["startCheckout"]
    assert session["__typename"] == "CheckoutSession" and session["mode"] == "payment"
    assert session["url"].startswith("http")
    (call,) = fake_stripe.calls_to("/v1/checkout/sessions")
    assert call.params["client_reference_id"] == str(user.id)
    assert call.params["metadata"]["pack"] == "credits_100"

    portal = data_of(await gql(PORTAL, token=token))["openBillingPortal"]
    assert portal["__typename"] == "BillingPortalSession" and portal["url"]

    other = await make_user(runtime)
    meddling = data_of(
        await gql(CHECKOUT, {"input": {"pack": "credits_100", "email": other.email}}, token=token)
    )["startCheckout"]
    assert meddling["code"] == "INVALID_INPUT"


async def test_stripe_errors_and_missing_configuration_are_values(
    runtime, fake_stripe, gql
) -> None:
    user = await make_user(runtime)
    token = user_token(user.id)
    fake_stripe.fail_next("/v1/customers", 402, "Your card was declined.", type="card_error")
    declined = data_of(await gql(CHECKOUT, {"input": {"tier": "pro"}}, token=token))
    assert declined["startCheckout"] == {
        "__typename": "PaymentProviderError",
        "code": "PAYMENT_PROVIDER_ERROR",
        "message": "Your card was declined.",
    }
    runtime.stripe = None
    unconfigured = data_of(await gql(CHECKOUT, {"input": {"tier": "pro"}}, token=token))
    assert unconfigured["startCheckout"]["code"] == "PAYMENTS_NOT_CONFIGURED"


async def test_support_lists_replays_and_links_a_payment(
    runtime, fake_stripe, gql, make_key
) -> None:
    support = await make_key("support")
    user = await make_user(runtime)
    orphan = ev.stripe_event(
        "checkout.session.completed", ev.checkout_session(user_id=None, email="late@example.com")
    )
    await deliver(gql, orphan)
    failed = data_of(
        await gql(
            "{ webhookEvents(status: FAILED) { edges { node { id type attempts lastError } } } }",
            token=support,
        )
    )["webhookEvents"]["edges"]
    assert [e["node"]["id"] for e in failed] == [orphan["id"]]
    assert failed[0]["node"]["lastError"]

    replay = """
    mutation ($id: ID!) { replayWebhookEvent(id: $id) {
      __typename
      ... on WebhookEventReplay { status replayed changed effects event { status attempts } }
      ... on Error { code }
    } }
    """
    still = data_of(await gql(replay, {"id": orphan["id"]}, token=support))["replayWebhookEvent"]
    assert still["__typename"] == "WebhookEventFailed"
    attempts = data_of(
        await gql("{ webhookEvents(status: FAILED) { edges { node { attempts } } } }",
                  token=support)
    )["webhookEvents"]["edges"][0]["node"]["attempts"]  # fmt: skip
    assert attempts == 2  # the delivery and the failed replay, both recorded
    await make_user(runtime, email="late@example.com")
    done = data_of(await gql(replay, {"id": orphan["id"]}, token=support))["replayWebhookEvent"]
    assert done["__typename"] == "WebhookEventReplay" and done["status"] == "PROCESSED"
    assert done["changed"] is True and done["effects"]
    again = data_of(await gql(replay, {"id": orphan["id"]}, token=support))["replayWebhookEvent"]
    assert again["status"] == "PROCESSED"
    assert (again["changed"], again["effects"]) == (False, [])
    missing = data_of(await gql(replay, {"id": "evt_nope"}, token=support))
    assert missing["replayWebhookEvent"]["code"] == "STRIPE_EVENT_NOT_FOUND"

    session_id = orphan["data"]["object"]["id"]
    linked = data_of(
        await gql(
            "query ($r: String!) { payment(ref: $r) { amount status creditsGranted "
            "user { email credits { available } } grants { amount remaining } "
            "creditEvents { kind amount source actor requestId } } }",
            {"r": session_id},
            token=support,
        )
    )["payment"]
    assert linked["creditsGranted"] == 100 and linked["user"]["email"] == "late@example.com"
    assert linked["grants"] == [{"amount": 100, "remaining": 100}]
    (grant_event,) = linked["creditEvents"]
    assert (grant_event["kind"], grant_event["amount"], grant_event["source"]) == (
        "grant", 100, "stripe",
    )  # fmt: skip
    assert grant_event["actor"] == f"stripe:{orphan['id']}"
    bystander = data_of(
        await gql("query ($e: String) { user(email: $e) { credits { available } } }",
                  {"e": user.email}, token=support)
    )  # fmt: skip
    assert bystander["user"]["credits"]["available"] == 0
    viewer = await gql('{ payment(ref: "1") { id } }', token=user_token(user.id))
    assert error_codes(viewer) == ["FORBIDDEN"]


async def test_dashboard_saved_queries_for_payments_and_failed_webhooks(
    runtime, fake_stripe, gql, make_key
) -> None:
    dashboard = await make_key("dashboard")
    headers = {"Authorization": f"Bearer {dashboard}"}
    user = await make_user(runtime)
    await deliver(gql, ev.stripe_event("checkout.session.completed",
                                       ev.checkout_session(user_id=user.id)))  # fmt: skip
    await deliver(gql, ev.stripe_event("checkout.session.completed",
                                       ev.checkout_session(user_id=999_999)))  # fmt: skip
    payments = await gql.http.post("/graphql", json={"id": "recent_payments"}, headers=headers)
    edges = data_of(payments.json())["payments"]["edges"]
    assert [(e["node"]["user"]["email"], e["node"]["creditsGranted"]) for e in edges] == [
        (user.email, 100)
    ]
    failed = await gql.http.post("/graphql", json={"id": "failed_webhooks"}, headers=headers)
    assert len(data_of(failed.json())["webhookEvents"]["edges"]) == 1


async def test_a_slow_stripe_does_not_hold_up_other_customers_writes(
    runtime, fake_stripe, gql, make_key
) -> None:
    buyer = await make_user(runtime)
    spender = await make_user(runtime, credits_granted=5)
    service = await make_key("service")
    fake_stripe.delay_seconds = 1.5

    async def spend() -> float:
        await asyncio.sleep(0.3)  # the checkout is waiting on Stripe by now
        started = time.perf_counter()
        body = await gql(
            "mutation ($i: ConsumeCreditsInput!) { consumeCredits(input: $i) { __typename } }",
            {"i": {"userId": str(spender.id), "amount": 1}},
            token=service,
        )
        assert data_of(body)["consumeCredits"]["__typename"] == "CreditChange"
        return time.perf_counter() - started

    checkout, waited = await asyncio.gather(
        gql(CHECKOUT, {"input": {"pack": "credits_100"}}, token=user_token(buyer.id)), spend()
    )
    assert data_of(checkout)["startCheckout"]["__typename"] == "CheckoutSession"
    assert waited < 1.0, f"a spend waited {waited:.2f} s behind a checkout"

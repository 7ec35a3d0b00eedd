"""POST /api/billing/webhook through the real ASGI app, signed here with Stripe's own helper."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import stripe
from sqlalchemy import event, func, select

from gateway.app import create_app
from gateway.runtime import Runtime
from resolvers.billing import deliveries
from resolvers.billing import events as billing
from resolvers.models import (
    AnalyticsEvent,
    CreditEvent,
    Payment,
    StripeEvent,
    User,
    WebhookSignatureFailure,
)
from tests.conftest import StatementCounter, unique_email
from tests.factories import make_user
from tests.fakes import stripe_events as ev

SECRET = "whsec_test_current"
OLD_SECRET = "whsec_test_previous"
URL = "/api/billing/webhook"


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    runtime.settings = replace(runtime.settings, stripe_webhook_secrets=(SECRET, OLD_SECRET))
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        yield http


def signed(body: str, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=timestamp)
    return {"Stripe-Signature": header, "Content-Type": "application/json"}


async def post(http: httpx.AsyncClient, event: dict, **sign) -> httpx.Response:
    body = json.dumps(event)
    return await http.post(URL, content=body, headers=signed(body, **sign))


async def count(runtime: Runtime, model: type, *conditions) -> int:
    async with runtime.db.read() as s:
        stmt = select(func.count()).select_from(model).where(*conditions)
        return (await s.execute(stmt)).scalar_one()


async def stored(runtime: Runtime, event_id: str) -> StripeEvent:
    async with runtime.db.read() as s:
        return await s.get(StripeEvent, event_id)


async def balance(runtime: Runtime, user_id: int) -> int:
    async with runtime.db.read() as s:
        stmt = select(User.credits_available).where(User.id == user_id)
        return (await s.execute(stmt)).scalar_one()


async def replay_stripe_event(runtime: Runtime, event_id: str, request_id: str) -> object:
    return await deliveries.replay_stripe_event(
        runtime.db,
        event_id=event_id,
        catalog=runtime.catalog,
        now=runtime.clock(),
        request_id=request_id,
        stripe_client=runtime.stripe,
    )


def purchase(user_id: int, **kw) -> dict:
    return ev.stripe_event("checkout.session.completed", ev.checkout_session(user_id=user_id, **kw))


async def test_purchase_grants_once_under_ten_concurrent_duplicate_deliveries(
    runtime, client
) -> None:
    user = await make_user(runtime)
    event = purchase(user.id)
    answers = await asyncio.gather(*(post(client, event) for _ in range(10)))
    assert [a.status_code for a in answers] == [200] * 10
    assert sum(not a.json()["duplicate"] for a in answers) == 1
    assert await balance(runtime, user.id) == 100
    assert await count(runtime, Payment) == 1
    assert await count(runtime, CreditEvent, CreditEvent.kind == "grant") == 1
    assert await count(runtime, AnalyticsEvent) == 1
    row = await stored(runtime, event["id"])
    assert (row.status, row.attempts, row.type) == ("processed", 1, "checkout.session.completed")
    assert row.payload == event and row.request_id


async def test_duplicate_delivery_answers_200_and_changes_nothing(runtime, client) -> None:
    user = await make_user(runtime)
    event = purchase(user.id)
    first = await post(client, event)
    again = await post(client, event)
    assert first.json() == {"event": event["id"], "status": "processed", "duplicate": False}
    assert again.json() == {"event": event["id"], "status": "processed", "duplicate": True}
    assert await balance(runtime, user.id) == 100
    assert (await stored(runtime, event["id"])).attempts == 1


async def test_replay_after_success_changes_nothing(runtime, client) -> None:
    user = await make_user(runtime)
    event = purchase(user.id)
    await post(client, event)
    outcome = await replay_stripe_event(runtime, event["id"], "req-replay")
    assert isinstance(outcome, deliveries.StripeEventOutcome) and outcome.replayed
    # It says nothing changed, not the first run's effects as if they had happened again.
    assert outcome.duplicate and outcome.effects == ()
    assert outcome.note == "already processed; replaying it changed nothing"
    assert await balance(runtime, user.id) == 100
    assert await count(runtime, CreditEvent) == 1
    row = await stored(runtime, event["id"])
    assert (row.status, row.attempts) == ("processed", 1)


async def test_unknown_user_fails_with_500_then_replay_succeeds_once_the_user_exists(
    runtime, client
) -> None:
    email = unique_email("late")
    event = purchase(None, customer="cus_late", email=email)
    for attempt in (1, 2):
        failed = await post(client, event)
        assert (
            failed.status_code == 500
            and "no user for Stripe customer cus_late" in (failed.json()["error"])
        )
        row = await stored(runtime, event["id"])
        assert (row.status, row.attempts) == ("failed", attempt)
    assert "create the user, then replay" in row.last_error
    too_early = await replay_stripe_event(runtime, event["id"], "req-replay-1")
    assert too_early.code == "STRIPE_EVENT_FAILED"
    row = await stored(runtime, event["id"])
    assert (row.status, row.attempts, row.request_id) == ("failed", 3, "req-replay-1")
    assert await count(runtime, Payment) == 0
    user = await make_user(runtime, email=email)
    outcome = await replay_stripe_event(runtime, event["id"], "req-replay-2")
    assert isinstance(outcome, deliveries.StripeEventOutcome) and outcome.status == "processed"
    assert await balance(runtime, user.id) == 100
    row = await stored(runtime, event["id"])
    assert (row.status, row.attempts, row.last_error) == ("processed", 4, None)
    redelivered = await post(client, event)
    assert redelivered.json()["duplicate"] is True
    assert await balance(runtime, user.id) == 100


async def test_replay_of_an_unknown_event_is_a_value(runtime) -> None:
    missing = await replay_stripe_event(runtime, "evt_nope", "req-replay")
    assert missing.code == "STRIPE_EVENT_NOT_FOUND"


async def test_subscription_event_logs_subscription_updated_after_commit(
    runtime, client, caplog
) -> None:
    user = await make_user(runtime)
    sub = ev.subscription(sub_id="sub_log", customer="cus_log", price="price_pro_monthly_eur")
    sub["metadata"] = {"user_id": str(user.id)}
    caplog.set_level(logging.INFO, logger="entitlements.changes")
    answer = await post(client, ev.stripe_event("customer.subscription.created", sub))
    assert answer.status_code == 200
    from gateway.logs import JsonFormatter

    lines = [JsonFormatter().format(r) for r in caplog.records if r.name == "entitlements.changes"]
    assert any('"action":"subscription_updated"' in line for line in lines)
    change = next(json.loads(line) for line in lines if "subscription_updated" in line)
    assert change["request_id"] == answer.headers["x-request-id"]
    assert change["actor"].startswith("stripe:evt_")


async def test_older_subscription_event_is_acknowledged_and_ignored(runtime, client) -> None:
    user = await make_user(runtime)

    def event(created: int, price: str) -> dict:
        sub = ev.subscription(sub_id="sub_o", customer="cus_o", price=price, user_id=user.id)
        return ev.stripe_event("customer.subscription.updated", sub, created=created)

    now = int(runtime.clock().timestamp())
    newer, older = event(now, "price_team_monthly_eur"), event(now - 60, "price_pro_monthly_eur")
    assert (await post(client, newer)).json()["status"] == "processed"
    assert (await post(client, older)).json()["status"] == "ignored"
    async with runtime.db.read() as s:
        assert (await s.get(User, user.id)).tier == "team"


# --- refusals --------------------------------------------------------------------------------


async def assert_refused(runtime, answer: httpx.Response, reason: str, failures: int = 1) -> None:
    assert answer.status_code == 400
    assert reason in answer.json()["error"] and "\n" not in answer.json()["error"]
    assert await count(runtime, WebhookSignatureFailure) == failures
    assert await count(runtime, StripeEvent) == 0


async def test_wrong_secret_is_refused_and_counted(runtime, client) -> None:
    user = await make_user(runtime)
    answer = await post(client, purchase(user.id), secret="whsec_someone_else")
    await assert_refused(runtime, answer, "no signature matches")
    async with runtime.db.read() as s:
        assert await billing.count_signature_failures(s) == 1
    assert await balance(runtime, user.id) == 0


async def test_stale_timestamp_is_refused(runtime, client) -> None:
    user = await make_user(runtime)
    answer = await post(client, purchase(user.id), timestamp=int(time.time()) - 301)
    await assert_refused(runtime, answer, "timestamp outside the 300 s tolerance")
    fresh = await post(client, purchase(user.id), timestamp=int(time.time()) - 200)
    assert fresh.status_code == 200


async def test_timestamp_from_the_future_is_refused(runtime, client) -> None:
    user = await make_user(runtime)
    answer = await post(client, purchase(user.id), timestamp=int(time.time()) + 301)
    await assert_refused(runtime, answer, "timestamp outside the 300 s tolerance")
    near = await post(client, purchase(user.id), timestamp=int(time.time()) + 200)
    assert near.status_code == 200
    assert await balance(runtime, user.id) > 0


async def test_body_tampered_after_signing_is_refused(runtime, client) -> None:
    user = await make_user(runtime)
    body = json.dumps(purchase(user.id, pack="credits_100"))
    headers = signed(body)
    tampered = body.replace("credits_100", "credits_2000")
    answer = await client.post(URL, content=tampered, headers=headers)
    await assert_refused(runtime, answer, "no signature matches")
    assert await balance(runtime, user.id) == 0


async def test_missing_or_malformed_signature_header_is_refused(runtime, client) -> None:
    body = json.dumps(purchase(1))
    missing = await client.post(URL, content=body)
    await assert_refused(runtime, missing, "missing Stripe-Signature header")
    garbled = await client.post(URL, content=body, headers={"Stripe-Signature": "v1=abc"})
    await assert_refused(runtime, garbled, "malformed Stripe-Signature header", failures=2)


async def test_rotated_secret_is_still_accepted(runtime, client) -> None:
    user = await make_user(runtime)
    answer = await post(client, purchase(user.id), secret=OLD_SECRET)
    assert answer.status_code == 200
    assert await balance(runtime, user.id) == 100


async def test_no_secret_configured_answers_503(runtime, client) -> None:
    runtime.settings = replace(runtime.settings, stripe_webhook_secrets=())
    answer = await post(client, purchase(1))
    assert answer.status_code == 503
    assert "STRIPE_WEBHOOK_SECRET" in answer.json()["error"]
    assert await count(runtime, StripeEvent) == 0


async def test_signed_but_unusable_bodies_are_refused(runtime, client) -> None:
    for body, reason in (
        ("not json at all", "body is not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({"id": "evt_1", "type": "x"}), "created"),
    ):
        answer = await client.post(URL, content=body, headers=signed(body))
        assert answer.status_code == 400 and reason in answer.json()["error"]
    big = json.dumps({**purchase(1), "padding": "x" * 600_000})
    oversized = await client.post(URL, content=big, headers=signed(big))
    assert oversized.status_code == 400 and "body over" in oversized.json()["error"]
    assert await count(runtime, StripeEvent) == 0
    assert await count(runtime, WebhookSignatureFailure) == 0


async def test_handler_failure_rolls_back_effects_and_is_retried(runtime, client) -> None:
    user = await make_user(runtime)
    session = ev.checkout_session(user_id=user.id, pack="credits_100")
    session["metadata"]["pack"] = "credits_404"
    event = ev.stripe_event("checkout.session.completed", session)
    answer = await post(client, event)
    assert answer.status_code == 500 and "credits_404" in answer.json()["error"]
    row = await stored(runtime, event["id"])
    assert (row.status, row.attempts) == ("failed", 1)
    assert await count(runtime, Payment) == 0 and await balance(runtime, user.id) == 0
    async with runtime.db.read() as s:
        page = await billing.list_stripe_events(s, status="failed")
    assert [e.id for e in page.events] == [event["id"]]


# --- CLI -------------------------------------------------------------------------------------


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_cli_lists_a_failed_event_replays_it_and_links_the_payment_to_its_credits(
    runtime, client, database_url
) -> None:
    email = unique_email("cli")
    event = purchase(None, customer="cus_cli", email=email)
    assert (await post(client, event)).status_code == 500

    listed = await asyncio.to_thread(
        run_cli, database_url, "webhooks", "list", "--status", "failed", "--json"
    )
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)["events"]
    assert (row["id"], row["status"], row["attempts"]) == (event["id"], "failed", 1)
    assert "no user for Stripe customer cus_cli" in row["last_error"]

    user = await make_user(runtime, email=email)
    replayed = await asyncio.to_thread(
        run_cli, database_url, "webhooks", "replay", event["id"], "--json"
    )
    assert replayed.returncode == 0, replayed.stderr
    document = json.loads(replayed.stdout)
    assert document["outcome"] == "processed" and document["event"]["attempts"] == 2
    assert any(e.startswith("grant_ai_credits: 100 credits") for e in document["effects"])
    assert await balance(runtime, user.id) == 100

    again = await asyncio.to_thread(run_cli, database_url, "webhooks", "replay", event["id"])
    assert again.returncode == 0, again.stderr
    assert f"{event['id']} (checkout.session.completed): already processed;" in again.stdout
    assert "changed nothing" in again.stdout and "grant_ai_credits" not in again.stdout
    assert await balance(runtime, user.id) == 100

    session_id = event["data"]["object"]["id"]
    shown = await asyncio.to_thread(run_cli, database_url, "payment", "show", session_id, "--json")
    assert shown.returncode == 0, shown.stderr
    payment = json.loads(shown.stdout)
    assert payment["user"]["email"] == email and payment["credits_granted"] == 100
    [grant] = payment["grants"]
    [ledger] = payment["ledger_events"]
    assert (ledger["kind"], ledger["amount"], ledger["grant_id"]) == ("grant", 100, grant["id"])
    assert ledger["actor"] == f"stripe:{event['id']}"

    missing = await asyncio.to_thread(run_cli, database_url, "webhooks", "replay", "evt_missing")
    assert missing.returncode == 1 and "No stored Stripe event 'evt_missing'" in missing.stderr


async def test_handler_crash_is_a_500_recorded_on_the_event(runtime, client) -> None:
    user = await make_user(runtime)
    event = purchase(user.id)
    event["data"]["object"]["amount_total"] = "five euros"
    answer = await post(client, event)
    assert answer.status_code == 500
    assert "Traceback" not in answer.text
    row = await stored(runtime, event["id"])
    assert (row.status, row.attempts) == ("failed", 1)
    assert row.last_error.startswith("internal error (ValueError)")
    assert await count(runtime, Payment) == 0 and await balance(runtime, user.id) == 0


async def test_a_database_refusal_leaks_no_sql_to_stripe_or_the_stored_event(
    runtime, client
) -> None:
    user = await make_user(runtime)
    event = purchase(user.id)
    event["data"]["object"]["amount_total"] = -500  # refused by the payments CHECK constraint
    answer = await post(client, event)
    assert answer.status_code == 500
    row = await stored(runtime, event["id"])
    for text in (answer.text, row.last_error):
        assert "INSERT" not in text and "payments" not in text and "-500" not in text, text
    assert row.last_error.startswith("internal error (IntegrityError)")
    assert row.attempts == 1


async def test_paid_invoice_is_stored_and_applied_in_at_most_seven_statements(
    runtime, client, count_statements: StatementCounter
) -> None:
    user = await make_user(runtime)
    subscribed = ev.subscription(
        sub_id="sub_count",
        customer="cus_count",
        price="price_pro_monthly_eur",
        period_end=runtime.clock() + timedelta(days=30),
        user_id=user.id,
    )
    created = await post(client, ev.stripe_event("customer.subscription.created", subscribed))
    assert created.json()["status"] == "processed"
    invoice = ev.invoice(
        customer="cus_count",
        subscription_id="sub_count",
        price="price_pro_monthly_eur",
        period_start=runtime.clock(),
        period_end=runtime.clock() + timedelta(days=30),
    )
    event = ev.stripe_event("invoice.paid", invoice)
    count_statements.reset()
    answer = await post(client, event)
    assert answer.json() == {"event": event["id"], "status": "processed", "duplicate": False}
    # The event's INSERT takes the grant key's lock, the payment's INSERT checks it is new.
    assert count_statements.count <= 7, "\n".join(count_statements.statements)
    row = await stored(runtime, event["id"])
    assert (row.status, row.attempts, row.processed_at) == ("processed", 1, runtime.clock())
    assert await balance(runtime, user.id) == 1000
    locks = [s for s in count_statements.statements if "FOR UPDATE" in s and "users" in s]
    assert len(locks) <= 1, locks  # SQLite has no FOR UPDATE: BEGIN IMMEDIATE locks


class UserLocks:
    """Counts the statements that lock a users row (SELECT … FROM users … FOR UPDATE)."""

    LOCK = re.compile(r"\bFROM users\b.*\bFOR UPDATE\b", re.DOTALL)

    def __init__(self, runtime: Runtime) -> None:
        self.statements: list[str] = []
        self._engine = runtime.db.engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._on_execute)

    def _on_execute(self, *args: object) -> None:
        if self.LOCK.search(str(args[2])):
            self.statements.append(str(args[2]))

    def take(self) -> list[str]:
        taken, self.statements = self.statements, []
        return taken

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._on_execute)


@pytest.fixture
def user_locks(runtime: Runtime, backend: str) -> Iterator[UserLocks]:
    if backend != "postgresql":
        pytest.skip("SQLite has no row locks: BEGIN IMMEDIATE takes the whole database")
    locks = UserLocks(runtime)
    yield locks
    locks.close()


async def test_each_stripe_event_locks_the_user_row_once(
    runtime, client, user_locks: UserLocks
) -> None:
    """The handler locks the user once and hands the account to payment, grant and tier code."""
    user = await make_user(runtime)
    period_end = runtime.clock() + timedelta(days=30)
    subscribed = ev.subscription(
        sub_id="sub_locks",
        customer="cus_locks",
        price="price_pro_monthly_eur",
        period_end=period_end,
        user_id=user.id,
    )
    invoice = ev.invoice(
        customer="cus_locks",
        subscription_id="sub_locks",
        price="price_pro_monthly_eur",
        period_start=runtime.clock(),
        period_end=period_end,
    )
    session = ev.checkout_session(user_id=user.id, customer="cus_locks")
    refund = ev.charge(payment_intent=session["payment_intent"], amount=500, amount_refunded=250)
    dispute = ev.dispute(charge_id=refund["id"], payment_intent=None, amount=500)
    deliveries_in_order = [
        ev.stripe_event("customer.subscription.created", subscribed),
        ev.stripe_event("invoice.paid", invoice),
        ev.stripe_event("checkout.session.completed", session),
        ev.stripe_event("charge.refunded", refund),
        ev.stripe_event("charge.dispute.created", dispute),
    ]
    for delivered in deliveries_in_order:
        user_locks.take()
        answer = await post(client, delivered)
        assert answer.json()["status"] == "processed", answer.text
        locks = user_locks.take()
        assert len(locks) == 1, (delivered["type"], locks)
    # The effects all happened: 1000 allowance + 100 pack, half the pack refunded, then disputed.
    assert await balance(runtime, user.id) == 1000

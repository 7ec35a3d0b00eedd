"""The grant key's lock of a paid Stripe event, taken by the statement that stores the event.

On PostgreSQL an invoice's or checkout's grant key is locked by the INSERT of the event row
(no statement of its own), before the event row and the user row, as every path takes them:
deliveries, sibling events about one payment, replays. The key's earlier use is still looked up
in a snapshot taken after the lock was granted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from sqlalchemy import func, select, text

from gateway.app import create_app
from gateway.runtime import Runtime
from resolvers.billing import deliveries
from resolvers.billing.payments import invoice_key
from resolvers.ledger.entries import Actor
from resolvers.ledger.tiers import set_tier
from resolvers.models import CreditEvent, Payment, StripeEvent, TierChange
from resolvers.users import UserRef
from tests.conftest import StatementCounter
from tests.factories import make_user
from tests.fakes import stripe_events as ev
from tests.gateway.gateway_process import two_served
from tests.gateway.test_webhooks import SECRET, balance, post, stored

PRICE = "price_pro_monthly_eur"
ALLOWANCE = 1000  # the pro tier's monthly credits in the test catalog


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    runtime.settings = replace(runtime.settings, stripe_webhook_secrets=(SECRET,))
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        yield http


@pytest.fixture
def postgresql_only(backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has no advisory locks: BEGIN IMMEDIATE already serialises writers")


def paid_invoice(runtime: Runtime, user_id: int, invoice_id: str | None = None) -> dict[str, Any]:
    invoice = ev.invoice(
        customer=f"cus_{user_id}",
        subscription_id=f"sub_{user_id}",
        price=PRICE,
        period_start=runtime.clock(),
        period_end=runtime.clock() + timedelta(days=30),
        invoice_id=invoice_id,
    )
    invoice["subscription_details"] = {"metadata": {"user_id": str(user_id)}}
    return invoice


async def test_paid_invoice_locks_its_key_in_the_insert_of_the_event(
    runtime: Runtime, client: httpx.AsyncClient, count_statements: StatementCounter, postgresql_only
) -> None:
    user = await make_user(runtime, calendar_allowances=False)
    event = ev.stripe_event("invoice.paid", paid_invoice(runtime, user.id))
    count_statements.reset()
    answer = await post(client, event)
    assert answer.json() == {"event": event["id"], "status": "processed", "duplicate": False}
    locking = [s for s in count_statements.statements if "pg_advisory_xact_lock" in s]
    assert len(locking) == 1, count_statements.statements
    assert locking[0].startswith("INSERT INTO stripe_events"), locking
    assert await balance(runtime, user.id) == ALLOWANCE


async def test_a_use_of_the_key_committed_while_the_delivery_waited_is_seen(
    runtime: Runtime, client: httpx.AsyncClient, postgresql_only
) -> None:
    """Another kind of change (a tier change of another user) takes the invoice's key first.

    Only the key's lock orders the two: no row or unique index is shared. The delivery waits for
    the lock inside its first statement, and must still see the tier change once it commits.
    """
    payer = await make_user(runtime, calendar_allowances=False)
    other = await make_user(runtime, calendar_allowances=False)
    invoice = paid_invoice(runtime, payer.id)
    event = ev.stripe_event("invoice.paid", invoice)
    key = invoice_key(invoice["id"])
    key_taken = asyncio.Event()
    actor = Actor(name="test", source="stripe")

    async def take_key_first(session: Any) -> Any:
        result = await set_tier(
            session,
            user=UserRef(user_id=other.id),
            tier="pro",
            reason="holds the key while the delivery waits",
            actor=actor,
            now=runtime.clock(),
            catalog=runtime.catalog,
            idempotency_key=key,
        )
        key_taken.set()
        await waiting_for_an_advisory_lock(runtime)
        return result

    holder = asyncio.create_task(runtime.db.write(take_key_first))
    await key_taken.wait()
    answer = await post(client, event)
    await holder
    # The key was spent by the tier change: the grant is a conflict, so the event failed.
    assert answer.status_code == 500, answer.text
    assert "idempotency" in answer.json()["error"].lower(), answer.text
    assert await balance(runtime, payer.id) == 0
    async with runtime.db.read() as s:
        assert await s.scalar(select(func.count()).where(TierChange.idempotency_key == key)) == 1
        assert await s.scalar(select(func.count()).where(CreditEvent.idempotency_key == key)) == 0
    row = await stored(runtime, event["id"])
    assert (row.status, row.attempts) == ("failed", 1)


async def waiting_for_an_advisory_lock(runtime: Runtime) -> None:
    """Until a connection of this database waits for an advisory lock (the delivery's INSERT)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
    )
    while True:
        async with runtime.db.connect() as conn:
            if (await conn.execute(query)).scalar_one():
                return
        await asyncio.sleep(0.01)


async def test_sibling_events_and_duplicates_of_one_invoice_grant_once(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    users = [await make_user(runtime, calendar_allowances=False) for _ in range(3)]
    sent = []
    for user in users:
        invoice = paid_invoice(runtime, user.id)
        # Stripe sends invoice.paid and, for the same payment, may deliver each event twice.
        siblings = [ev.stripe_event("invoice.paid", invoice) for _ in range(3)]
        sent += [event for event in siblings for _ in range(2)]
    answers = await asyncio.gather(*(post(client, event) for event in sent))
    assert [a.status_code for a in answers] == [200] * len(sent), [a.text for a in answers]
    assert sum(not a.json()["duplicate"] for a in answers) == 9  # each sibling applied once
    for user in users:
        assert await balance(runtime, user.id) == ALLOWANCE
    async with runtime.db.read() as s:
        assert await s.scalar(select(func.count()).select_from(Payment)) == len(users)
        grants = select(func.count()).where(CreditEvent.kind == "grant")
        assert await s.scalar(grants) == len(users)


async def test_replays_racing_redeliveries_of_a_failed_invoice_grant_once(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    """A replay takes the key before the event row, as a delivery does: no circle of waits."""
    user = await make_user(runtime, calendar_allowances=False)
    invoice = paid_invoice(runtime, user.id)
    invoice["subscription_details"] = {"metadata": {"user_id": str(user.id + 10_000)}}
    invoice["customer"] = "cus_nobody_yet"
    event = ev.stripe_event("invoice.paid", invoice)
    assert (await post(client, event)).status_code == 500  # no such user yet
    await runtime.db.write(lambda s: link_customer(s, user.id, "cus_nobody_yet"))

    async def replay(n: int) -> Any:
        return await deliveries.replay_stripe_event(
            runtime.db,
            event_id=event["id"],
            catalog=runtime.catalog,
            now=runtime.clock(),
            request_id=f"req-replay-{n}",
        )

    results = await asyncio.gather(
        *(replay(n) for n in range(4)), *(post(client, event) for _ in range(4))
    )
    replays, answers = results[:4], results[4:]
    assert all(isinstance(r, deliveries.StripeEventOutcome) for r in replays), replays
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    applied = sum(not r.duplicate for r in replays) + sum(
        not a.json()["duplicate"] for a in answers
    )
    assert applied == 1
    assert await balance(runtime, user.id) == ALLOWANCE
    row = await stored(runtime, event["id"])
    assert row.status == "processed"


async def link_customer(session: Any, user_id: int, customer: str) -> None:
    await session.execute(
        text("UPDATE users SET stripe_customer_id = :customer WHERE id = :id"),
        {"customer": customer, "id": user_id},
    )


@pytest.fixture
def two_gateways(database_url: str, tmp_path: Path) -> Iterator[list[str]]:
    with two_served(database_url, tmp_path, STRIPE_WEBHOOK_SECRET=SECRET) as bases:
        yield bases


@pytest.mark.slow
async def test_two_gateways_grant_each_invoice_once(
    runtime: Runtime, two_gateways: list[str]
) -> None:
    """Sibling events of each invoice, sent to two processes at once: the database orders them."""
    users = [await make_user(runtime, calendar_allowances=False) for _ in range(4)]
    bodies = []
    for user in users:
        invoice = paid_invoice(runtime, user.id)
        for _ in range(4):
            bodies.append(json.dumps(ev.stripe_event("invoice.paid", invoice)))
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=16)) as http:

        async def deliver(index: int, body: str) -> httpx.Response:
            header = stripe.WebhookSignature.generate_signature_header(body, SECRET)
            return await http.post(
                f"{two_gateways[index % 2]}/api/billing/webhook",
                content=body,
                headers={"Stripe-Signature": header, "Content-Type": "application/json"},
            )

        answers = await asyncio.gather(*(deliver(i, b) for i, b in enumerate(bodies)))
    assert [a.status_code for a in answers] == [200] * len(bodies), [a.text for a in answers]
    for user in users:
        assert await balance(runtime, user.id) == ALLOWANCE
    async with runtime.db.read() as s:
        assert await s.scalar(select(func.count()).select_from(Payment)) == len(users)
        assert await s.scalar(select(func.count()).where(CreditEvent.kind == "grant")) == len(users)
        stored_events = await s.scalar(select(func.count()).select_from(StripeEvent))
        assert stored_events == len(bodies)

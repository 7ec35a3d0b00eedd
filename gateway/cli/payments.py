"""entitlements payment: a payment with its grants and ledger events."""

from __future__ import annotations

import click

from gateway.cli.command import (
    echo_json,
    fail,
    sync,
)
from gateway.runtime import Runtime
from resolvers.billing import payments
from resolvers.errors import Failure
from resolvers.ledger import entries as ledger


@click.group()
def payment() -> None:
    """Payments and the credits they granted (runbook: linking payments to credit balance)."""


@payment.command("show")
@click.argument("ref", metavar="ID_OR_STRIPE_ID")
@click.option("--json", "as_json", is_flag=True, help="One compact JSON document on one line.")
@sync
async def payment_show(runtime: Runtime, ref: str, as_json: bool) -> None:
    """A payment by id or Stripe id (cs_, in_, pi_, ch_), with its grants and ledger events."""
    async with runtime.db.read() as session:
        found = await payments.find_payment(session, ref=ref)
    if isinstance(found, Failure):
        fail(found.message)
    p = found.payment
    document = {
        "id": p.id,
        "user": {"id": found.user.id, "email": found.user.email},
        "kind": p.kind,
        "status": p.status,
        "amount": p.amount,
        "currency": p.currency,
        "amount_refunded": p.amount_refunded,
        "pack": p.pack_code,
        "tier": p.tier_code,
        "stripe": {
            "object": p.stripe_object_id,
            "payment_intent": p.stripe_payment_intent_id,
            "charge": p.stripe_charge_id,
            "invoice": p.stripe_invoice_id,
        },
        "credits_granted": p.credits_granted,
        "credits_revoked": p.credits_revoked,
        "credits_unrecovered": p.credits_unrecovered,
        "created_at": p.created_at.isoformat(),
        "grants": [
            {
                "id": g.id,
                "amount": g.amount,
                "remaining": g.remaining,
                "expires_at": g.expires_at.isoformat() if g.expires_at else None,
                "is_purchased": g.is_purchased,
            }
            for g in found.grants
        ],
        "ledger_events": [
            {**ledger.describe_event(e), "grant_id": e.grant_id, "allocations": e.allocations}
            for e in found.events
        ],
    }
    echo_json(document, compact=as_json)

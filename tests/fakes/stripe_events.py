"""Stripe event payloads as Stripe sends them (API version 2024-06-20 shapes unless noted)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

API_VERSION = "2024-06-20"


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def stripe_event(
    event_type: str, obj: dict[str, Any], *, created: int | None = None, event_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": event_id or new_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "type": event_type,
        "created": created if created is not None else int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "data": {"object": obj},
    }


def checkout_session(
    *,
    user_id: int | None,
    pack: str | None = "credits_100",
    session_id: str | None = None,
    amount: int = 500,
    currency: str = "eur",
    payment_status: str = "paid",
    customer: str | None = None,
    email: str | None = None,
    mode: str = "payment",
    subscription: str | None = None,
    line_item_prices: list[str] | None = None,
) -> dict[str, Any]:
    session_id = session_id or new_id("cs_test")
    metadata = {"pack": pack} if pack else {}
    obj: dict[str, Any] = {
        "id": session_id,
        "object": "checkout.session",
        "mode": mode,
        "status": "complete",
        "payment_status": payment_status,
        "client_reference_id": str(user_id) if user_id is not None else None,
        "customer": customer,
        "customer_details": {"email": email} if email else None,
        "amount_total": amount,
        "currency": currency,
        "metadata": metadata,
        "payment_intent": new_id("pi") if mode == "payment" else None,
        "subscription": subscription,
    }
    if line_item_prices is not None:
        obj["line_items"] = {
            "object": "list",
            "data": [{"price": {"id": p}, "quantity": 1} for p in line_item_prices],
        }
    return obj


def subscription(
    *,
    sub_id: str,
    customer: str,
    price: str,
    status: str = "active",
    period_end: datetime | None = None,
    trial_end: datetime | None = None,
    user_id: int | None = None,
) -> dict[str, Any]:
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "metadata": {"user_id": str(user_id)} if user_id is not None else {},
        "current_period_end": int(period_end.timestamp()) if period_end else None,
        "trial_end": int(trial_end.timestamp()) if trial_end else None,
        "items": {
            "object": "list",
            "data": [{"id": new_id("si"), "price": {"id": price, "object": "price"}}],
        },
    }


def invoice(
    *,
    customer: str,
    subscription_id: str,
    price: str,
    period_start: datetime,
    period_end: datetime,
    amount_paid: int = 1900,
    invoice_id: str | None = None,
    charge: str | None = None,
    payment_intent: str | None = None,
) -> dict[str, Any]:
    return {
        "id": invoice_id or new_id("in"),
        "object": "invoice",
        "customer": customer,
        "customer_email": None,
        "subscription": subscription_id,
        "billing_reason": "subscription_cycle",
        "amount_paid": amount_paid,
        "currency": "eur",
        "status": "paid",
        "charge": charge,
        "payment_intent": payment_intent,
        "lines": {
            "object": "list",
            "data": [
                {
                    "id": new_id("il"),
                    "price": {"id": price, "object": "price"},
                    "period": {
                        "start": int(period_start.timestamp()),
                        "end": int(period_end.timestamp()),
                    },
                    "proration": False,
                }
            ],
        },
    }


def charge(
    *,
    payment_intent: str | None,
    amount: int,
    amount_refunded: int,
    charge_id: str | None = None,
    invoice_id: str | None = None,
) -> dict[str, Any]:
    return {
        "id": charge_id or new_id("ch"),
        "object": "charge",
        "amount": amount,
        "amount_refunded": amount_refunded,
        "refunded": amount_refunded >= amount,
        "payment_intent": payment_intent,
        "invoice": invoice_id,
        "currency": "eur",
    }


def dispute(*, charge_id: str, payment_intent: str | None, amount: int) -> dict[str, Any]:
    return {
        "id": new_id("dp"),
        "object": "dispute",
        "charge": charge_id,
        "payment_intent": payment_intent,
        "amount": amount,
        "currency": "eur",
        "status": "needs_response",
        "reason": "fraudulent",
    }

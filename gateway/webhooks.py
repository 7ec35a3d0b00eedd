"""POST /api/billing/webhook: read the body, verify Stripe's signature, hand the event over.

Storing and applying it is resolvers.billing.deliveries; this module maps its result onto an
answer. Never 2xx before the effects are committed: Stripe retries anything else, and the
event's handler is idempotent, so a retry is always safe while a premature 200 could lose a
payment.
"""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from typing import Any

import stripe
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.logs import log_fields
from gateway.prometheus import WEBHOOK_SECONDS
from gateway.runtime import Runtime
from resolvers.billing import deliveries, events
from resolvers.billing.payloads import check_stripe_event
from resolvers.errors import StripeEventFailed

log = logging.getLogger("gateway.webhooks")

MAX_WEBHOOK_BODY_BYTES = 512 * 1024
TOLERANCE_SECONDS = 300
_REASONS = (
    ("Timestamp outside", f"timestamp outside the {TOLERANCE_SECONDS} s tolerance"),
    ("Unable to extract", "malformed Stripe-Signature header"),
    ("No signatures found with expected scheme", "no v1 signature in Stripe-Signature header"),
    ("No signatures found matching", "no signature matches the body with a configured secret"),
)


def verify_signature(body: bytes, header: str | None, secrets: tuple[str, ...]) -> str | None:
    """None when one of the secrets (several during a rotation) signed this body recently."""
    if not header:
        return "missing Stripe-Signature header"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not UTF-8"
    reasons = []
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, header, secret, TOLERANCE_SECONDS)
        except stripe.SignatureVerificationError as exc:
            message = exc.user_message or str(exc)
            reasons.append(next((r for p, r in _REASONS if message.startswith(p)), message))
        else:
            if _signed_at(header) > time.time() + TOLERANCE_SECONDS:
                # The library only refuses old timestamps; one from the future would keep a
                # captured delivery replayable for as long as the clock lags behind it.
                reasons.append(_REASONS[0][1])
                continue
            return None
    # The library checks the timestamp only once a signature matched: a stale reason from any
    # secret is the truer one.
    return min(reasons, key=lambda r: not r.startswith("timestamp"))


def _signed_at(header: str) -> int:
    """The header's `t=` timestamp, read as stripe does (the header already verified)."""
    items = (item.split("=", 2) for item in header.split(","))
    return int(next(item[1] for item in items if item[0] == "t"))


async def stripe_webhook(request: Request) -> JSONResponse:
    runtime: Runtime = request.app.state.runtime
    request_id: str | None = getattr(request.state, "request_id", None)
    answer = partial(_answer, request_id=request_id)
    secrets = runtime.settings.stripe_webhook_secrets
    if not secrets:
        message = "Stripe webhooks are not configured: STRIPE_WEBHOOK_SECRET"
        return answer(503, "WEBHOOKS_NOT_CONFIGURED", {"error": message})
    body = await request.body()
    if len(body) > MAX_WEBHOOK_BODY_BYTES:
        return answer(400, "BODY_TOO_LARGE", {"error": f"body over {MAX_WEBHOOK_BODY_BYTES} bytes"})
    reason = verify_signature(body, request.headers.get("stripe-signature"), secrets)
    if reason is not None:
        await runtime.db.write(
            lambda s: events.record_signature_failure(
                s, reason=reason, request_id=request_id, now=runtime.clock()
            )
        )
        log_fields(log, logging.WARNING, event="stripe_signature_refused", reason=reason)
        return answer(400, "SIGNATURE_REFUSED", {"error": f"signature refused: {reason}"})
    try:
        payload = json.loads(body)
    except ValueError:
        return answer(400, "BAD_REQUEST", {"error": "body is not JSON"})
    if (invalid := check_stripe_event(payload)) is not None:
        return answer(400, "BAD_REQUEST", {"error": f"not a Stripe event: {invalid.message}"})

    started = time.perf_counter()
    # A database that cannot be reached raises: nothing was stored, the app answers 503.
    result = await deliveries.receive_stripe_event(
        runtime.db,
        event=payload,
        catalog=runtime.catalog,
        now=runtime.clock(),
        request_id=request_id,
        stripe_client=runtime.stripe,
    )
    WEBHOOK_SECONDS.labels(outcome=_outcome(result)).observe(time.perf_counter() - started)
    if isinstance(result, StripeEventFailed):
        # 500 so that Stripe retries; the event is stored as failed and can be replayed.
        return answer(500, "EVENT_FAILED", {"error": result.message, "event": payload["id"]})
    return answer(
        200, None, {"event": payload["id"], "status": result.status, "duplicate": result.duplicate}
    )


def _outcome(result: deliveries.StripeEventOutcome | StripeEventFailed) -> str:
    if isinstance(result, StripeEventFailed):
        return "failed"
    return "duplicate" if result.duplicate else result.status


def _answer(
    status_code: int, code: str | None, body: dict[str, Any], *, request_id: str | None
) -> JSONResponse:
    """A failure carries its code and the request id, like every failure the gateway answers."""
    if code is not None:
        body = {**body, "code": code, "requestId": request_id}
    return JSONResponse(body, status_code=status_code)

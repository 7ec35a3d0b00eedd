"""POST /api/billing/webhook: verify Stripe's signature, then store the event and apply it.

Never 2xx before the effects are committed: Stripe retries anything else, and the event's
handler is idempotent, so a retry is always safe while a premature 200 could lose a payment.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import stripe
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.db import DatabaseUnavailable
from gateway.logs import log_fields
from gateway.prometheus import WEBHOOK_SECONDS
from gateway.runtime import Runtime
from resolvers.billing import events as billing
from resolvers.errors import StripeEventFailed, StripeEventNotFound

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
            lambda s: billing.record_signature_failure(
                s, reason=reason, request_id=request_id, now=runtime.clock()
            )
        )
        log_fields(log, logging.WARNING, event="stripe_signature_refused", reason=reason)
        return answer(400, "SIGNATURE_REFUSED", {"error": f"signature refused: {reason}"})
    try:
        payload = json.loads(body)
    except ValueError:
        return answer(400, "BAD_REQUEST", {"error": "body is not JSON"})
    if (invalid := billing.check_stripe_event(payload)) is not None:
        return answer(400, "BAD_REQUEST", {"error": f"not a Stripe event: {invalid.message}"})

    result = await process_stripe_event(runtime, payload, request_id)
    if isinstance(result, StripeEventFailed):
        # 500 so that Stripe retries; the event is stored as failed and can be replayed.
        return answer(500, "EVENT_FAILED", {"error": result.message, "event": payload["id"]})
    return answer(
        200, None, {"event": payload["id"], "status": result.status, "duplicate": result.duplicate}
    )


async def process_stripe_event(
    runtime: Runtime, event: dict[str, Any], request_id: str | None
) -> billing.StripeEventOutcome | StripeEventFailed:
    """Store and apply one delivery in one transaction; on failure record it in a second."""
    started = time.perf_counter()
    now = runtime.clock()
    result = await _apply_or_record(
        runtime,
        lambda s: billing.receive_stripe_event(
            s,
            event=event,
            catalog=runtime.catalog,
            now=now,
            request_id=request_id,
            stripe_client=runtime.stripe,
        ),
        event["id"],
        request_id,
        event,
    )
    _log_outcome(event["id"], event["type"], result)
    if isinstance(result, StripeEventFailed):
        outcome = "failed"
    else:
        outcome = "duplicate" if result.duplicate else result.status  # type: ignore[union-attr]
    WEBHOOK_SECONDS.labels(outcome=outcome).observe(time.perf_counter() - started)
    return result  # type: ignore[return-value]


async def replay_stripe_event(
    runtime: Runtime, event_id: str, request_id: str | None
) -> billing.StripeEventOutcome | StripeEventNotFound | StripeEventFailed:
    """Re-run a stored event (CLI, GraphQL); a failure is recorded like a delivery's."""
    now = runtime.clock()
    result = await _apply_or_record(
        runtime,
        lambda s: billing.replay_stripe_event(
            s,
            event_id=event_id,
            catalog=runtime.catalog,
            now=now,
            request_id=request_id,
            stripe_client=runtime.stripe,
        ),
        event_id,
        request_id,
    )
    if not isinstance(result, StripeEventNotFound):
        _log_outcome(event_id, "replay", result)
    return result


async def _apply_or_record(
    runtime: Runtime,
    work: Callable[[AsyncSession], Awaitable[Any]],
    event_id: str,
    request_id: str | None,
    event: dict[str, Any] | None = None,
) -> billing.StripeEventOutcome | StripeEventNotFound | StripeEventFailed:
    """Apply in one transaction; a failure (value or crash) is recorded in a second one.

    The effects roll back with the first transaction, so the failure must be written apart.
    """
    try:
        result = await runtime.db.write(work)
    except DatabaseUnavailable:
        raise  # nothing was stored: a 503, and Stripe delivers it again
    except Exception as exc:  # a bug or a database fault: the effects were rolled back
        log.exception("stripe event %s: handler raised", event_id)
        result = StripeEventFailed(event_id=event_id, reason=internal_error(exc, request_id))
    if isinstance(result, StripeEventFailed):
        await _record_failure(runtime, result, request_id, event)
    return result


def internal_error(exc: Exception, request_id: str | None) -> str:
    """What Stripe, the stored event and GraphQL may see of a crash: never SQL or parameters.

    The traceback is in the log under the request id.
    """
    return f"internal error ({type(exc).__name__}); see the log for request {request_id}"


async def _record_failure(
    runtime: Runtime,
    failure: StripeEventFailed,
    request_id: str | None,
    event: dict[str, Any] | None = None,
) -> None:
    try:
        await runtime.db.write(
            lambda s: billing.record_stripe_event_failure(
                s, failure=failure, now=runtime.clock(), request_id=request_id, event=event
            )
        )
    except Exception:  # the answer is a 5xx either way, and Stripe will deliver it again
        log.exception("stripe event %s: recording its failure failed too", failure.event_id)


def _log_outcome(
    event_id: str, event_type: str, result: billing.StripeEventOutcome | StripeEventFailed
) -> None:
    if isinstance(result, StripeEventFailed):
        log_fields(
            log,
            logging.ERROR,
            event="stripe_event",
            stripe_event_id=event_id,
            type=event_type,
            status="failed",
            error=result.reason,
        )
        return
    log_fields(
        log,
        logging.INFO,
        event="stripe_event",
        stripe_event_id=event_id,
        type=event_type,
        status=result.status,
        duplicate=result.duplicate,
        replayed=result.replayed,
        attempts=result.event.attempts,
        effects=list(result.effects),
        note=result.note,
    )


def _answer(
    status_code: int, code: str | None, body: dict[str, Any], *, request_id: str | None
) -> JSONResponse:
    """A failure carries its code and the request id, like every failure the gateway answers."""
    if code is not None:
        body = {**body, "code": code, "requestId": request_id}
    return JSONResponse(body, status_code=status_code)

"""diagnose: each broken state the runbook describes is found, with its escalation path."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from gateway.runtime import Runtime
from resolvers.insights.diagnose import Diagnosis, Finding, Severity, diagnose
from resolvers.ledger import credits
from resolvers.ledger.entries import Actor
from resolvers.models import CreditEvent, CreditGrant, User
from resolvers.users import UserRef
from tests.factories import make_user
from tests.resolvers.billing_rows import (
    add_paid_grant,
    add_payment,
    add_row,
    add_signature_failures,
    add_stripe_event,
    update_user,
)


async def run(runtime: Runtime, email: str, **kw: Any) -> Diagnosis:
    async with runtime.db.read() as session:
        return await diagnose(
            session, email=email, catalog=runtime.catalog, now=runtime.clock(), **kw
        )


def codes(diagnosis: Diagnosis) -> set[str]:
    return {f.code for f in diagnosis.findings}


def only(diagnosis: Diagnosis, code: str) -> Finding:
    assert codes(diagnosis) == {code}, diagnosis.findings
    return diagnosis.findings[0]


async def paying_customer(runtime: Runtime, *, tier: str = "pro", credits_granted: int = 0) -> User:
    """A subscriber whose stored Stripe state agrees with the tier."""
    user = await make_user(runtime, tier=tier, credits_granted=credits_granted)
    await update_user(
        runtime,
        user.id,
        stripe_customer_id=f"cus_{user.id}",
        stripe_subscription_id=f"sub_{user.id}",
        subscription_status="active",
        subscription_price_id=f"price_{tier}_monthly_eur",
    )
    return user


async def test_healthy_paying_customer_has_no_findings(runtime: Runtime) -> None:
    user = await paying_customer(runtime, credits_granted=25)
    payment = await add_payment(runtime, user, amount=500)
    await add_paid_grant(runtime, user, payment, 100)
    await add_stripe_event(runtime, customer_id=f"cus_{user.id}", status="processed", attempts=1)
    await add_signature_failures(runtime, 2, received_at=runtime.clock())
    await add_payment(runtime, user, amount=500, status="failed")

    result = await run(runtime, user.email.upper())

    assert result.findings == () and result.is_healthy
    assert result.user is not None
    assert (result.user.email, result.user.tier) == (user.email, "pro")
    assert (result.user.credits_available, result.user.ledger_sum) == (125, 125)
    assert result.user.grants_remaining == result.user.unexpired_remaining == 125
    assert "balance_mismatch" in result.checks and "tier_mismatch" in result.checks


async def test_unknown_email_is_a_finding_not_an_error(runtime: Runtime) -> None:
    result = await run(runtime, " Nobody@Example.com ")
    assert result.user is None and result.email == "nobody@example.com"
    finding = only(result, "user_not_found")
    assert finding.escalation is None
    assert "login email" in finding.remediation


async def test_tier_below_the_active_subscription_is_a_wrong_tier(runtime: Runtime) -> None:
    user = await paying_customer(runtime)
    await update_user(runtime, user.id, tier="free")
    finding = only(await run(runtime, user.email), "tier_mismatch")
    assert finding.severity is Severity.ERROR
    assert finding.escalation == "Billing engineering after 2 failed retries"
    assert finding.evidence["expected_tier"] == "pro"
    assert finding.evidence["source"] == "stored"
    assert "Replay" in finding.remediation


async def test_stored_subscription_price_decides_the_expected_tier(runtime: Runtime) -> None:
    # Was the live-subscription variant; diagnose reads only the state stored from webhooks.
    user = await paying_customer(runtime)
    await update_user(runtime, user.id, subscription_price_id="price_team_monthly_usd")
    finding = only(await run(runtime, user.email), "tier_mismatch")
    assert finding.evidence["source"] == "stored"
    assert finding.evidence["price_ids"] == ["price_team_monthly_usd"]
    assert finding.evidence["expected_tier"] == "team"
    await update_user(
        runtime,
        user.id,
        subscription_status="trialing",
        subscription_price_id="price_pro_monthly_usd",
    )
    assert (await run(runtime, user.email)).is_healthy


async def test_paid_tier_kept_after_cancellation_is_a_warning(runtime: Runtime) -> None:
    user = await paying_customer(runtime)
    await update_user(runtime, user.id, subscription_status="canceled")
    finding = only(await run(runtime, user.email), "tier_mismatch")
    assert finding.severity is Severity.WARNING
    assert finding.evidence["expected_tier"] == "free"


async def test_subscription_price_missing_from_the_catalog(runtime: Runtime) -> None:
    user = await paying_customer(runtime)
    await update_user(runtime, user.id, subscription_price_id="price_legacy_gold")
    finding = only(await run(runtime, user.email), "unknown_subscription_price")
    assert finding.evidence["price_ids"] == ["price_legacy_gold"]


async def test_paying_tier_without_a_stripe_customer(runtime: Runtime) -> None:
    user = await make_user(runtime, tier="team")
    finding = only(await run(runtime, user.email), "missing_stripe_customer")
    assert finding.severity is Severity.WARNING
    assert finding.escalation == "Billing engineering after 2 failed retries"
    assert (await run(runtime, (await make_user(runtime)).email)).is_healthy


async def test_paid_payment_without_any_grant(runtime: Runtime) -> None:
    user = await paying_customer(runtime)
    payment = await add_payment(runtime, user, amount=2000, pack_code="credits_500")
    finding = only(await run(runtime, user.email), "payment_without_grant")
    assert finding.escalation == "Backend engineering if grant event is absent"
    assert finding.evidence["count"] == 1
    row = finding.evidence["rows"][0]
    assert (row["id"], row["stripe_object_id"]) == (payment.id, payment.stripe_object_id)
    assert row["created_at"] == runtime.clock().isoformat()


async def test_payment_granted_but_missing_from_the_ledger(runtime: Runtime) -> None:
    user = await paying_customer(runtime)
    marked = await add_payment(
        runtime, user, kind="subscription", amount=1900, credits_granted=1000
    )
    # A grant row for the payment, but no ledger event: no entitlement_change was ever written.
    with_grant_row = await add_payment(runtime, user, amount=500)
    await add_row(
        runtime,
        CreditGrant(
            user_id=user.id,
            amount=100,
            remaining=0,
            source="stripe",
            reason="credit pack",
            payment_id=with_grant_row.id,
            created_at=runtime.clock(),
        ),
    )
    finding = only(await run(runtime, user.email), "payment_without_entitlement_change")
    assert finding.escalation == "Billing engineering"
    assert finding.evidence["count"] == 2
    assert {row["id"] for row in finding.evidence["rows"]} == {marked.id, with_grant_row.id}


async def test_negative_ledger_is_a_negative_balance(runtime: Runtime) -> None:
    user = await paying_customer(runtime)
    await add_row(
        runtime,
        CreditEvent(
            user_id=user.id,
            kind="consume",
            amount=-10,
            balance_after=-10,
            reason="overspend",
            source="usage",
            actor="ai-backend",
            request_id="req-x",
            created_at=runtime.clock(),
        ),
    )
    finding = only(await run(runtime, user.email), "negative_balance")
    assert finding.escalation == "Data platform team"
    assert finding.evidence["ledger_sum"] == -10


async def test_balance_that_disagrees_with_the_ledger_is_stuck(runtime: Runtime) -> None:
    user = await paying_customer(runtime, credits_granted=100)
    await update_user(runtime, user.id, credits_available=999)
    finding = only(await run(runtime, user.email), "balance_mismatch")
    assert finding.escalation == "Data platform team"
    assert finding.evidence["disagrees_with"] == [
        "ledger_sum",
        "grants_remaining",
        "unexpired_remaining",
    ]
    assert (finding.evidence["credits_available"], finding.evidence["ledger_sum"]) == (999, 100)


async def test_expiry_never_written_off_is_stuck_but_a_pending_one_is_not(
    runtime: Runtime,
) -> None:
    soon = runtime.clock() + timedelta(hours=1)
    user = await paying_customer(runtime, credits_granted=0)
    await runtime.db.write(
        lambda s: credits.grant_ai_credits(
            s,
            user=UserRef(user_id=user.id),
            amount=10,
            reason="gift",
            actor=Actor(name="t", source="support", request_id="req-t"),
            now=runtime.clock(),
            expires_at=soon,
        )
    )
    runtime.clock.advance(hours=2)
    # Written off at the next change: the row still counting it is expected.
    assert (await run(runtime, user.email)).is_healthy
    # But with no expiry pending the row can never catch up.
    await update_user(runtime, user.id, credits_next_expiry=None)
    finding = only(await run(runtime, user.email), "balance_mismatch")
    assert finding.evidence["disagrees_with"] == ["unexpired_remaining"]


async def test_refund_that_could_not_take_back_spent_credits(runtime: Runtime) -> None:
    user = await paying_customer(runtime)
    payment = await add_payment(
        runtime,
        user,
        amount=500,
        status="refunded",
        amount_refunded=500,
        credits_revoked=60,
        credits_unrecovered=40,
    )
    await add_paid_grant(runtime, user, payment, 100)
    finding = only(await run(runtime, user.email), "refund_credits_unrecovered")
    assert finding.severity is Severity.WARNING
    assert finding.evidence["rows"][0]["credits_unrecovered"] == 40


async def test_failed_webhook_events_for_the_customer(runtime: Runtime) -> None:
    user = await paying_customer(runtime)
    customer = f"cus_{user.id}"
    await add_stripe_event(runtime, customer_id=customer, attempts=1)
    await add_stripe_event(runtime, customer_id="cus_someone_else", attempts=5)
    await add_stripe_event(runtime, customer_id=customer, status="processed", attempts=3)
    finding = only(await run(runtime, user.email), "webhook_failed")
    assert finding.severity is Severity.WARNING
    assert finding.evidence["rows"][0]["last_error"] == "handler failed"
    assert "payload" not in finding.evidence["rows"][0]

    await add_stripe_event(runtime, customer_id=customer, attempts=2)
    result = await run(runtime, user.email)
    assert codes(result) == {"webhook_failed", "webhook_failing_repeatedly"}
    repeated = next(f for f in result.findings if f.code == "webhook_failing_repeatedly")
    assert repeated.escalation == "Billing engineering rotation"
    assert repeated.evidence["count"] == 1


async def test_repeated_signature_failures_in_the_last_day(runtime: Runtime) -> None:
    user = await paying_customer(runtime)
    await add_signature_failures(runtime, 5, received_at=runtime.clock() - timedelta(hours=25))
    await add_signature_failures(runtime, 2, received_at=runtime.clock() - timedelta(hours=1))
    assert (await run(runtime, user.email)).is_healthy
    await add_signature_failures(runtime, 1, received_at=runtime.clock())
    finding = only(await run(runtime, user.email), "repeated_signature_failures")
    assert finding.escalation == "Stripe support"
    assert finding.evidence["count"] == 3
    # Bad signatures block every customer: even an unknown email hears about them.
    assert codes(await run(runtime, "ghost@example.com")) == {
        "user_not_found",
        "repeated_signature_failures",
    }


async def test_changes_without_a_correlation_id(runtime: Runtime) -> None:
    user = await paying_customer(runtime)
    await runtime.db.write(
        lambda s: credits.grant_ai_credits(
            s,
            user=UserRef(user_id=user.id),
            amount=5,
            reason="batch job",
            actor=Actor(name="cron", source="system", request_id=None),
            now=runtime.clock(),
        )
    )
    finding = only(await run(runtime, user.email), "missing_correlation_id")
    assert finding.escalation == "notify DevOps"
    assert finding.evidence == {"credit_events": 1, "tier_changes": 0}

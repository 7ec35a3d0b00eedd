"""collect_entitlement_metrics: the figures, the window, a fixed statement count, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.runtime import Runtime
from resolvers.errors import InvalidInput
from resolvers.insights import metrics
from resolvers.insights.metrics import CurrencyAmount, EntitlementMetrics, TierCount
from resolvers.ledger import credits
from resolvers.users import UserRef
from tests.conftest import StatementCounter
from tests.factories import SUPPORT, make_user
from tests.resolvers.billing_rows import add_payment, insert_users, update_user

REPO = Path(__file__).resolve().parents[2]


async def collect(runtime: Runtime, days: int = 7, now: datetime | None = None):
    async with runtime.db.read() as session:
        return await metrics.collect_entitlement_metrics(
            session, now=now or runtime.clock(), days=days, catalog=runtime.catalog
        )


async def spend(runtime: Runtime, user, amount: int) -> None:
    result = await runtime.db.write(
        lambda s: credits.consume_credits(
            s,
            user=UserRef(user_id=user.id),
            amount=amount,
            reason="ai usage",
            actor=SUPPORT,
            now=runtime.clock(),
            catalog=runtime.catalog,
        )
    )
    assert isinstance(result, credits.CreditChanged), result


async def test_empty_database_lists_every_tier_at_zero(runtime: Runtime) -> None:
    result = await collect(runtime)
    assert isinstance(result, EntitlementMetrics)
    assert result.users.total == 0
    assert result.users.plans == (TierCount("free", 0), TierCount("pro", 0), TierCount("team", 0))
    assert result.payments.count == 0 and result.payments.gross_by_currency == ()
    assert (result.credits.granted, result.credits.consumed) == (0, 0)


async def test_plan_breakdown_and_trials_expiring_within_the_window(runtime: Runtime) -> None:
    now = runtime.clock()
    await insert_users(
        runtime,
        [
            {"email": "f1@example.com", "tier": "free"},
            {"email": "f2@example.com", "tier": "free"},
            {"email": "p1@example.com", "tier": "pro", "trial_ends_at": now + timedelta(days=2)},
            # Exactly at the end of the 7-day window: still inside.
            {"email": "p2@example.com", "tier": "pro", "trial_ends_at": now + timedelta(days=7)},
            {"email": "p3@example.com", "tier": "pro", "trial_ends_at": now + timedelta(days=8)},
            {"email": "p4@example.com", "tier": "pro", "trial_ends_at": now - timedelta(hours=1)},
            {"email": "old@example.com", "tier": "legacy_gold"},
        ],
    )
    result = await collect(runtime)
    assert result.users.total == 7
    assert result.users.plans == (
        TierCount("free", 2),
        TierCount("pro", 4),
        TierCount("team", 0),
        TierCount("legacy_gold", 1),
    )
    assert result.users.trials_expiring == 2
    assert (await collect(runtime, days=8)).users.trials_expiring == 3


async def test_payment_rollups_cover_paid_payments_in_the_window(runtime: Runtime) -> None:
    user = await make_user(runtime)
    now = runtime.clock()
    await add_payment(runtime, user, amount=500, created_at=now - timedelta(days=1))
    await add_payment(
        runtime,
        user,
        kind="subscription",
        amount=1900,
        status="refunded",
        amount_refunded=1900,
        created_at=now - timedelta(days=6, hours=23),
    )
    await add_payment(
        runtime,
        user,
        amount=550,
        currency="USD",
        status="partially_refunded",
        amount_refunded=200,
        created_at=now - timedelta(hours=1),
    )
    await add_payment(
        runtime, user, kind="subscription", amount=5400, currency="USD", status="disputed"
    )
    # Outside the window, never paid, or not yet happened: none of these count.
    await add_payment(runtime, user, amount=999, created_at=now - timedelta(days=7, seconds=1))
    await add_payment(runtime, user, amount=777, status="failed")
    await add_payment(runtime, user, amount=333, created_at=now + timedelta(minutes=5))

    payments = (await collect(runtime)).payments
    assert payments.count == 4
    assert payments.gross_by_currency == (
        CurrencyAmount("EUR", 2400),
        CurrencyAmount("USD", 5950),
    )
    assert payments.refunds == 2
    assert payments.refunded_by_currency == (
        CurrencyAmount("EUR", 1900),
        CurrencyAmount("USD", 200),
    )
    assert payments.disputes == 1
    assert (payments.credit_packs, payments.subscriptions) == (2, 2)
    assert (await collect(runtime, days=8)).payments.count == 5


async def test_credits_granted_and_consumed_over_the_window(runtime: Runtime) -> None:
    then = runtime.clock.advance(days=-10)
    old = await make_user(runtime, credits_granted=1000)
    await spend(runtime, old, 100)
    now = runtime.clock.advance(days=10)
    recent = await make_user(runtime, credits_granted=300)
    await spend(runtime, recent, 120)
    await spend(runtime, old, 5)

    # When a month began in those 10 days, `old`'s first spend in it granted its allowance (50).
    allowance = 50 if (then.year, then.month) != (now.year, now.month) else 0
    figures = (await collect(runtime)).credits
    assert (figures.granted, figures.consumed) == (300 + allowance, 125)
    assert (await collect(runtime, days=11)).credits.granted == 1300 + allowance


@pytest.mark.parametrize("days", [0, -1, 367, True])
async def test_days_outside_1_to_366_are_invalid_input(runtime: Runtime, days: int) -> None:
    result = await collect(runtime, days=days)
    assert isinstance(result, InvalidInput) and result.field == "days"


async def test_366_days_is_allowed(runtime: Runtime) -> None:
    assert (await collect(runtime, days=366)).days == 366


@pytest.mark.parametrize("user_count", [10, 10_000])
async def test_statement_count_does_not_grow_with_users(
    runtime: Runtime, count_statements: StatementCounter, user_count: int
) -> None:
    now = runtime.clock()
    tiers = runtime.catalog.tier_codes
    await insert_users(
        runtime,
        [
            {
                "email": f"bulk-{i}@example.com",
                "tier": tiers[i % len(tiers)],
                "trial_ends_at": now + timedelta(days=1) if i % 10 == 0 else None,
            }
            for i in range(user_count)
        ],
    )
    payer = await make_user(runtime, credits_granted=50)
    for _ in range(3):
        await add_payment(runtime, payer, amount=500)
    count_statements.reset()

    result = await collect(runtime)

    assert count_statements.count <= 3, count_statements.statements
    assert result.users.total == user_count + 1
    assert result.users.trials_expiring == user_count // 10
    assert result.payments.count == 3 and result.credits.granted == 50


async def test_runbook_snippet_reads_plans_and_payments(runtime: Runtime) -> None:
    await make_user(runtime, tier="pro")
    result = await collect(runtime)
    snapshot = {"plan_breakdown": result["users"]["plans"], "recent_payments": result["payments"]}
    assert snapshot["plan_breakdown"] == [
        {"tier": "free", "count": 0},
        {"tier": "pro", "count": 1},
        {"tier": "team", "count": 0},
    ]
    assert snapshot["recent_payments"]["count"] == 0
    json.dumps(result.as_dict())


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_cli_metrics_json_prints_the_same_document(
    runtime: Runtime, database_url: str
) -> None:
    # The CLI runs on the wall clock: build the data around it.
    runtime.clock.now = datetime.now(UTC)
    payer = await make_user(runtime, tier="pro", credits_granted=40)
    await make_user(runtime)
    await update_user(runtime, payer.id, trial_ends_at=runtime.clock() + timedelta(days=3))
    await add_payment(runtime, payer, amount=1900, created_at=runtime.clock() - timedelta(days=2))
    await add_payment(runtime, payer, amount=550, currency="USD")

    done = run_cli(database_url, "metrics", "--days", "7", "--json")

    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    printed = json.loads(done.stdout)
    assert printed["window"]["days"] == 7
    assert printed["users"]["plans"] == [
        {"tier": "free", "count": 1},
        {"tier": "pro", "count": 1},
        {"tier": "team", "count": 0},
    ]
    assert printed["users"]["trials_expiring"] == 1
    assert printed["payments"]["gross_by_currency"] == [
        {"currency": "EUR", "amount": 1900},
        {"currency": "USD", "amount": 550},
    ]
    assert printed["credits"]["granted"] == 40
    expected = (await collect(runtime, now=datetime.now(UTC))).as_dict()
    del printed["window"], expected["window"]
    assert printed == expected


async def test_cli_metrics_refuses_days_out_of_range(database_url: str) -> None:
    done = run_cli(database_url, "metrics", "--days", "0")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == "error: --days: must be a whole number from 1 to 366"

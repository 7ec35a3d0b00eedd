"""The period metered usage counts in: Stripe's billing period for subscribers, else the month."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from resolvers.entitlements.access import usage_period


def subscriber(period_end: datetime | None, status: str = "active") -> SimpleNamespace:
    return SimpleNamespace(
        stripe_subscription_id="sub_1",
        subscription_status=status,
        subscription_period_end=period_end,
    )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("period_end", "now", "period"),
    [
        # The known period: it ends at the period end, and began a month before.
        ("2027-03-20T08:00", "2027-03-01T00:00", ("2027-02-20T08:00", "2027-03-20T08:00")),
        # The renewal's webhook is late: the next period is a month after the last end.
        ("2027-03-20T08:00", "2027-03-20T08:00", ("2027-03-20T08:00", "2027-04-20T08:00")),
        ("2027-03-20T08:00", "2027-06-25T00:00", ("2027-06-20T08:00", "2027-07-20T08:00")),
        # Anchored on the 31st: Stripe bills on the last day of shorter months.
        ("2027-01-31T12:00", "2027-02-15T00:00", ("2027-01-31T12:00", "2027-02-28T12:00")),
        ("2027-01-31T12:00", "2027-03-30T00:00", ("2027-02-28T12:00", "2027-03-31T12:00")),
        ("2027-01-31T12:00", "2026-12-31T11:00", ("2026-11-30T12:00", "2026-12-31T12:00")),
    ],
)
def test_a_subscriber_counts_in_stripe_billing_periods(
    period_end: str, now: str, period: tuple[str, str]
) -> None:
    assert usage_period(subscriber(at(period_end)), at(now)) == (at(period[0]), at(period[1]))


@pytest.mark.parametrize(
    "user",
    [
        SimpleNamespace(
            stripe_subscription_id=None, subscription_status=None, subscription_period_end=None
        ),
        subscriber(at("2027-03-20T08:00"), status="canceled"),
        subscriber(None),
    ],
)
def test_everyone_else_counts_in_calendar_months_utc(user: SimpleNamespace) -> None:
    assert usage_period(user, at("2027-03-05T10:00")) == (
        at("2027-03-01T00:00"),
        at("2027-04-01T00:00"),
    )

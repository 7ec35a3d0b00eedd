"""The period metered usage counts in: Stripe's billing period for subscribers, else the month."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolvers.entitlements.periods import (
    Period,
    PeriodCache,
    period_key,
    stepped_period,
    usage_period,
)
from resolvers.ledger.allowances import allowance_period


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


# Instants to the second across leap years and month ends; zones other than UTC too, since
# callers may pass any aware instant and only UTC anchors are kept.
ZONES = st.sampled_from([UTC, UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7))])
INSTANTS = st.builds(
    lambda seconds, zone: (
        datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    ).astimezone(zone),
    st.integers(0, 15 * 366 * 86400),
    ZONES,
)
# Month ends and the hours around midnight are where stepping and clamping can go wrong.
ANCHORS = st.one_of(
    INSTANTS,
    st.builds(
        lambda year, month, hour, zone: (
            datetime(year, month, 1, hour, tzinfo=zone) - timedelta(days=1)
        ),
        st.integers(2021, 2033),
        st.integers(1, 12),
        st.integers(0, 23),
        ZONES,
    ),
)


def expected(anchor: datetime, now: datetime) -> tuple[str, str, str]:
    start, end = stepped_period(anchor, now)
    return start.isoformat(), end.isoformat(), period_key(start)


def shown(period: Period) -> tuple[str, str, str]:
    # As strings: the answer's time zone is part of it (resetsAt is its isoformat).
    return period.start.isoformat(), period.end.isoformat(), period.key


@settings(max_examples=300, deadline=None)
@given(
    anchors=st.lists(ANCHORS, min_size=1, max_size=3),
    nows=st.lists(st.tuples(st.integers(0, 2), INSTANTS), min_size=1, max_size=25),
    close=st.lists(st.integers(-40 * 86400, 40 * 86400), max_size=25),
)
def test_kept_periods_answer_what_stepping_from_the_anchor_answers(
    anchors: list[datetime], nows: list[tuple[int, datetime]], close: list[int]
) -> None:
    """One cache over many anchors and instants, far apart and close to the last one: every
    answer is the one stepping from scratch gives, period key and time zone included."""
    cache = PeriodCache()
    asked = [(anchors[i % len(anchors)], now) for i, now in nows]
    # Instants near the anchor and near each other cross period boundaries back and forth.
    anchor = anchors[0]
    asked += [(anchor, anchor + timedelta(seconds=offset)) for offset in close]
    for anchor, now in asked:
        assert shown(cache.subscription(anchor, now)) == expected(anchor, now)


@settings(max_examples=200, deadline=None)
@given(nows=st.lists(INSTANTS, min_size=1, max_size=25))
def test_the_kept_calendar_month_is_the_month_of_now_utc(nows: list[datetime]) -> None:
    cache = PeriodCache()
    for now in nows + [n + timedelta(seconds=s) for n in nows for s in (-1, 1)]:
        start, end = allowance_period(now)
        assert shown(cache.month(now)) == (start.isoformat(), end.isoformat(), period_key(start))


def test_kept_periods_change_at_the_boundary_to_the_second() -> None:
    cache = PeriodCache()
    anchor = at("2027-01-31T12:00")
    before, after = at("2027-02-28T11:59:59"), at("2027-02-28T12:00")
    assert cache.subscription(anchor, before).end == after
    assert cache.subscription(anchor, after) == (
        after,
        at("2027-03-31T12:00"),
        "2027-02-28T12:00:00Z",
    )
    assert cache.subscription(anchor, before).start == anchor
    assert cache.month(at("2027-02-28T23:59:59")).key == "2027-02-01T00:00:00Z"
    assert cache.month(at("2027-03-01T00:00")).key == "2027-03-01T00:00:00Z"
    assert cache.month(at("2027-02-28T23:59:59")).key == "2027-02-01T00:00:00Z"


def test_an_equal_anchor_in_another_zone_keeps_its_own_zone() -> None:
    cache = PeriodCache()
    anchor = at("2027-03-20T08:00")
    elsewhere = anchor.astimezone(timezone(timedelta(hours=2)))
    now = at("2027-04-01T00:00")
    for first, second in ((anchor, elsewhere), (elsewhere, anchor)):
        assert shown(cache.subscription(first, now)) == expected(first, now)
        assert shown(cache.subscription(second, now)) == expected(second, now)

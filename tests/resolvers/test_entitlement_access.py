"""One entitlement check: what `entitlement_of` answers from the user row, held to its rules.

`entitlement_of` reads the stored count once for both the period it counts in and what was
used; the answer must stay what the separate rules give (`counting_period`, `used_in`,
`live_override`, the tier's rule), for every kind of user, period and override.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.settings import DEFAULT_CATALOG
from resolvers.catalog.model import load_catalog
from resolvers.entitlements.access import (
    TOTAL,
    Source,
    counting_period,
    entitlement_of,
    live_override,
    period_of,
    used_in,
)
from resolvers.entitlements.periods import period_key

CATALOG = load_catalog(DEFAULT_CATALOG)
FEATURES = list(CATALOG.features)

INSTANTS = st.builds(
    lambda seconds: datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds),
    st.integers(0, 4 * 366 * 86400),
)
# Offsets from `now` in days: periods already over, this one, and one a process ahead began.
NEAR_DAYS = st.integers(-70, 70)


def by_rules(user: Any, feature: str, now: datetime) -> tuple[Any, ...]:
    """The entitlement composed from the separate rules, as (field, ...) in Entitlement order."""
    period, resets_at = counting_period(CATALOG, feature, user, now)
    used = used_in(user, feature, period)
    override = live_override(user, feature, now)
    if override is not None:
        has_access, limit, source = override["has_access"], override["limit"], Source.OVERRIDE
    else:
        rule = (CATALOG.tier(user.tier) or CATALOG.default_tier).entitlements.get(feature)
        if rule is not None and rule.has_access:
            has_access, limit, source = True, rule.limit, Source.PLAN
        else:
            has_access, limit, source = False, None, Source.NONE
    if not has_access:
        limit, remaining = None, 0
    else:
        remaining = None if limit is None else max(limit - used, 0)
    return feature, has_access, limit, used, remaining, resets_at, source


@st.composite
def users(draw: st.DrawFn, now: datetime) -> SimpleNamespace:
    tier = draw(st.sampled_from([*CATALOG.tier_codes, "retired_tier"]))
    subscribed = draw(st.booleans())
    period_end = now + timedelta(days=draw(NEAR_DAYS), seconds=draw(st.integers(0, 86399)))
    user = SimpleNamespace(
        tier=tier,
        stripe_subscription_id="sub_1" if subscribed else None,
        subscription_status=draw(st.sampled_from(["active", "trialing", "past_due", "canceled"])),
        subscription_period_end=period_end if subscribed else None,
        entitlement_usage=None,
        entitlement_overrides=None,
    )
    if draw(st.booleans()):
        user.entitlement_usage = {}
        for feature in draw(st.lists(st.sampled_from(FEATURES), unique=True)):
            # As the counting writes them: TOTAL for a running count; for a metered one, this
            # period's key, or some other period's near now (an older one, or one a process
            # ahead began).
            current, _ = period_of(CATALOG, feature, user, now)
            started = now + timedelta(days=draw(NEAR_DAYS))
            other = period_key(started) if current != TOTAL else TOTAL
            key = draw(st.sampled_from([current, other]))
            user.entitlement_usage[feature] = {"period": key, "used": draw(st.integers(0, 200))}
    if draw(st.booleans()):
        overrides: dict[str, Any] = {}
        for feature in draw(st.lists(st.sampled_from(FEATURES), unique=True)):
            has_access = draw(st.booleans())
            limit = draw(st.one_of(st.none(), st.integers(0, 100))) if has_access else None
            expires = draw(st.one_of(st.none(), NEAR_DAYS))
            overrides[feature] = {
                "has_access": has_access,
                "limit": limit,
                "expires_at": None
                if expires is None
                else (now + timedelta(days=expires)).isoformat(),
            }
        user.entitlement_overrides = overrides
    return user


@settings(max_examples=400, deadline=None)
@given(data=st.data(), now=INSTANTS)
def test_an_entitlement_is_what_its_separate_rules_give(data: st.DataObject, now: datetime) -> None:
    user = data.draw(users(now))
    for feature in FEATURES:
        found = entitlement_of(CATALOG, user, feature, now)
        assert (
            found.feature,
            found.has_access,
            found.limit,
            found.usage,
            found.remaining,
            found.resets_at,
            found.source,
        ) == by_rules(user, feature, now)


def test_usage_of_this_period_counts_and_of_the_last_one_does_not() -> None:
    now = datetime(2027, 3, 15, 12, tzinfo=UTC)
    this_month, _ = period_of(
        CATALOG,
        "pdf_exports",
        SimpleNamespace(
            stripe_subscription_id=None, subscription_status=None, subscription_period_end=None
        ),
        now,
    )
    user = SimpleNamespace(
        tier="free",
        stripe_subscription_id=None,
        subscription_status=None,
        subscription_period_end=None,
        entitlement_usage={"pdf_exports": {"period": this_month, "used": 2}},
        entitlement_overrides=None,
    )
    limit = CATALOG.tier("free").entitlements["pdf_exports"].limit
    assert entitlement_of(CATALOG, user, "pdf_exports", now).remaining == limit - 2
    # The month after, nothing was written: the same row reads as unused.
    later = entitlement_of(CATALOG, user, "pdf_exports", now + timedelta(days=31))
    assert (later.usage, later.remaining) == (0, limit)

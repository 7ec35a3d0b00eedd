"""Entitlements: what a user may use now, from their tier, support's overrides and their usage.

Reads never write: usage is stored per period, so a period with no row yet is usage 0, and a
tier change shows at once because nothing is copied from the tier onto the user.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import DateTime, Integer, String, bindparam, cast, null, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from resolvers.allowances import BILLED_BY_STRIPE, allowance_period
from resolvers.catalog import Catalog
from resolvers.models import EntitlementOverride, FeatureUsage

# The period of a running count (a limit on what the product reports, e.g. projects).
TOTAL = "total"
# The longest a period can have begun before now: a month and a day of slack.
_LONGEST_PERIOD = timedelta(days=32)


class Source(StrEnum):
    PLAN = "PLAN"
    OVERRIDE = "OVERRIDE"
    NONE = "NONE"


@dataclass(frozen=True, slots=True)
class Entitlement:
    feature: str
    has_access: bool
    limit: int | None  # None: no limit (or no access)
    usage: int
    remaining: int | None  # None: no limit; 0 without access
    resets_at: datetime | None  # metered features: when this period's usage starts again at 0
    source: Source

    def describe(self) -> str:
        """One line for support: "no access", "no limit", or "3 of 5 used, resets …"."""
        if not self.has_access:
            text = "no access"
        elif self.limit is None:
            text = f"no limit ({self.usage} used)"
        else:
            text = f"{self.usage} of {self.limit} used"
        resets = f", resets {self.resets_at.isoformat()}" if self.resets_at else ""
        return f"{text}{resets} [{self.source.value.lower()}]"

    def as_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "has_access": self.has_access,
            "limit": self.limit,
            "usage": self.usage,
            "remaining": self.remaining,
            "resets_at": self.resets_at.isoformat() if self.resets_at else None,
            "source": self.source.value,
        }


@dataclass(frozen=True, slots=True)
class Override:
    """The newest override of one feature, as the reads need it."""

    has_access: bool
    limit: int | None
    expires_at: datetime | None


@dataclass(slots=True)
class EntitlementState:
    """One user's stored entitlement data: newest override per feature, usage per period."""

    overrides: dict[str, Override] = field(default_factory=dict)
    usage: dict[tuple[str, str], int] = field(default_factory=dict)


def usage_period(user: Any, now: datetime) -> tuple[datetime, datetime]:
    """The period metered usage counts in: the Stripe billing period for subscribers, else the
    calendar month (UTC)."""
    end = user.subscription_period_end
    if end is None or not (
        user.stripe_subscription_id and user.subscription_status in BILLED_BY_STRIPE
    ):
        return allowance_period(now)
    # Stripe bills monthly from the anchor of the known period end; stepping whole months from
    # it still finds the right period when the renewal's webhook is late.
    months = (now.year - end.year) * 12 + now.month - end.month
    while _add_months(end, months) <= now:
        months += 1
    while _add_months(end, months - 1) > now:
        months -= 1
    return _add_months(end, months - 1), _add_months(end, months)


def _add_months(anchor: datetime, months: int) -> datetime:
    index = anchor.month - 1 + months
    year, month = anchor.year + index // 12, index % 12 + 1
    # Stripe keeps a 31st anchor at the end of shorter months.
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def period_of(
    catalog: Catalog, feature: str, user: Any, now: datetime
) -> tuple[str, datetime | None]:
    """The key usage of `feature` is stored under now, and when that period ends (if it does)."""
    if catalog.usage_period(feature) is None:
        return TOTAL, None
    start, end = usage_period(user, now)
    return start.strftime("%Y-%m-%dT%H:%M:%SZ"), end


def entitlement_of(
    catalog: Catalog, user: Any, feature: str, state: EntitlementState, now: datetime
) -> Entitlement:
    """The user's entitlement to one catalog feature: an unexpired override wins over the plan."""
    period, resets_at = period_of(catalog, feature, user, now)
    used = state.usage.get((feature, period), 0)
    override = state.overrides.get(feature)
    if override is not None and (override.expires_at is None or override.expires_at > now):
        has_access, limit, source = override.has_access, override.limit, Source.OVERRIDE
    else:
        tier = catalog.tier(user.tier) or catalog.default_tier
        rule = tier.entitlements.get(feature)
        if rule is not None and rule.has_access:
            has_access, limit, source = True, rule.limit, Source.PLAN
        else:
            has_access, limit, source = False, None, Source.NONE
    if not has_access:
        limit, remaining = None, 0
    else:
        # A downgrade below what is used leaves nothing, and deletes nothing.
        remaining = None if limit is None else max(limit - used, 0)
    return Entitlement(
        feature=feature,
        has_access=has_access,
        limit=limit,
        usage=used,
        remaining=remaining,
        resets_at=resets_at,
        source=source,
    )


def entitlements_of(
    catalog: Catalog, user: Any, state: EntitlementState, now: datetime
) -> list[Entitlement]:
    """Every catalog feature, in catalog order, including those the user has no access to."""
    return [entitlement_of(catalog, user, f, state, now) for f in catalog.features]


_OVERRIDES = EntitlementOverride.__table__
_USAGE = FeatureUsage.__table__
_KEYS = bindparam("keys", expanding=True)
# Overrides and this period's usage in one statement: an entitlement check is one round trip.
_STATE = union_all(
    select(
        _OVERRIDES.c.user_id,
        _OVERRIDES.c.feature,
        cast(null(), String).label("period"),
        cast(_OVERRIDES.c.has_access, Integer).label("value"),
        _OVERRIDES.c.usage_limit,
        _OVERRIDES.c.expires_at,
        _OVERRIDES.c.id,
    ).where(_OVERRIDES.c.user_id.in_(_KEYS)),
    select(
        _USAGE.c.user_id,
        _USAGE.c.feature,
        _USAGE.c.period,
        _USAGE.c.used,
        cast(null(), Integer),
        cast(null(), DateTime(timezone=True)),
        _USAGE.c.id,
    ).where(
        _USAGE.c.user_id.in_(_KEYS),
        or_(_USAGE.c.period == TOTAL, _USAGE.c.period >= bindparam("since", type_=String)),
    ),
)


async def entitlement_states(
    conn: AsyncConnection | AsyncSession, user_ids: Sequence[int], *, now: datetime
) -> list[EntitlementState]:
    """Each user's overrides and usage of the periods that can be current at `now`."""
    since = (now - _LONGEST_PERIOD).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = await conn.execute(_STATE, {"keys": list(user_ids), "since": since})
    states: dict[int, EntitlementState] = {i: EntitlementState() for i in user_ids}
    newest: dict[tuple[int, str], int] = {}
    for row in rows:
        state = states[row.user_id]
        if row.period is not None:
            state.usage[(row.feature, row.period)] = row.value
        elif row.id > newest.get((row.user_id, row.feature), 0):
            newest[(row.user_id, row.feature)] = row.id
            state.overrides[row.feature] = Override(
                has_access=bool(row.value),
                limit=row.usage_limit,
                expires_at=row.expires_at,
            )
    return [states[i] for i in user_ids]

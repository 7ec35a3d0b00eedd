"""Entitlements: what a user may use now, from their tier, support's overrides and their usage.

Everything is read from the user row: usage is stored with the period it was counted in, so a
new period reads as 0 without a write, and a tier change shows at once because nothing is
copied from the tier onto the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from resolvers.catalog.model import Catalog
from resolvers.entitlements.periods import current_period

# The period of a running count (a limit on what the product reports, e.g. projects).
TOTAL = "total"


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
class CountedAccount:
    """An account as a write left it, with the usage and overrides committed on its row.

    A ledger write's locked `Account` does not read the usage columns (no credit or tier change
    needs them); what `entitlement_of` reads of a user is its tier and billing period from the
    account, the rest from the row read after the write committed.
    """

    tier: str
    stripe_subscription_id: str | None
    subscription_status: str | None
    subscription_period_end: datetime | None
    entitlement_usage: dict[str, Any] | None
    entitlement_overrides: dict[str, Any] | None


def counts_usage(user: Any) -> bool:
    """Whether `user` carries its usage: a user row does, a ledger write's account does not."""
    return hasattr(user, "entitlement_usage")


def with_usage_of(user: Any, row: Any) -> Any:
    """`user` as `entitlement_of` reads it: given the usage of `row` (its committed row) if it
    carries none itself."""
    if counts_usage(user):
        return user
    return CountedAccount(
        tier=user.tier,
        stripe_subscription_id=user.stripe_subscription_id,
        subscription_status=user.subscription_status,
        subscription_period_end=user.subscription_period_end,
        entitlement_usage=row.entitlement_usage,
        entitlement_overrides=row.entitlement_overrides,
    )


def period_of(
    catalog: Catalog, feature: str, user: Any, now: datetime
) -> tuple[str, datetime | None]:
    """The key usage of `feature` is stored under now, and when that period ends (if it does)."""
    if catalog.usage_period(feature) is None:
        return TOTAL, None
    period = current_period(user, now)
    return period.key, period.end


def counting_period(
    catalog: Catalog, feature: str, user: Any, now: datetime
) -> tuple[str, datetime | None]:
    """The period usage of `feature` counts in at `now`, and when it ends.

    The caller's own period, unless the stored count belongs to a period that began after
    `now`: another gateway process, whose clock is ahead across a period boundary, already
    counts in the next period. Counting in ours would reset that newer count, so this process
    counts (and reads) in the stored period until its clock gets there.
    """
    return _counting_period(catalog, feature, user, now, _counted(user, feature))


def _counted(user: Any, feature: str) -> dict[str, Any] | None:
    """The stored count of `feature` ({"period", "used"}), if any."""
    usage = user.entitlement_usage
    return usage.get(feature) if usage else None


def _counting_period(
    catalog: Catalog, feature: str, user: Any, now: datetime, counted: dict[str, Any] | None
) -> tuple[str, datetime | None]:
    if catalog.usage_period(feature) is None:
        return TOTAL, None
    period = current_period(user, now)
    if counted is None or counted["period"] == period.key:
        return period.key, period.end
    stored_start = datetime.fromisoformat(counted["period"].replace("Z", "+00:00"))
    if stored_start <= now:
        return period.key, period.end
    return counted["period"], current_period(user, stored_start).end


def used_in(user: Any, feature: str, period: str) -> int:
    """What the user used of `feature` in `period`: 0 unless that is the period last counted."""
    counted = _counted(user, feature)
    return counted["used"] if counted is not None and counted["period"] == period else 0


def live_override(user: Any, feature: str, now: datetime) -> dict[str, Any] | None:
    """Support's override of `feature` on the user, unless it has expired."""
    overrides = user.entitlement_overrides
    override = overrides.get(feature) if overrides else None
    if override is None:
        return None
    expires_at = override.get("expires_at")
    if expires_at is not None and datetime.fromisoformat(expires_at) <= now:
        return None
    return override


def entitlement_of(catalog: Catalog, user: Any, feature: str, now: datetime) -> Entitlement:
    """The user's entitlement to one catalog feature: an unexpired override wins over the plan."""
    # The stored count is read once for both the period it counts in and what was used.
    counted = _counted(user, feature)
    period, resets_at = _counting_period(catalog, feature, user, now, counted)
    used = counted["used"] if counted is not None and counted["period"] == period else 0
    override = live_override(user, feature, now)
    if override is not None:
        has_access, limit, source = override["has_access"], override["limit"], Source.OVERRIDE
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


def entitlements_of(catalog: Catalog, user: Any, now: datetime) -> list[Entitlement]:
    """Every catalog feature, in catalog order, including those the user has no access to."""
    return [entitlement_of(catalog, user, feature, now) for feature in catalog.features]

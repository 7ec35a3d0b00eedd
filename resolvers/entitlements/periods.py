"""The periods metered usage counts in: the Stripe billing period for subscribers, else the
calendar month (UTC), each with the key its usage is stored under.

Every entitlement check of a metered feature needs its period, and stepping months from an
anchor (plus formatting the key) was most of the check's own CPU. A period is the same for every
instant inside it, so the last one found is kept per anchor (one for the calendar month) and
reused while `now` is still inside it; any other instant is stepped from scratch, as before.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from typing import Any, NamedTuple

from resolvers.kinds import is_paying
from resolvers.ledger.allowances import allowance_period

# Anchors (subscription period ends) whose last period is kept: beyond this the cache starts over.
MAX_ANCHORS = 8192


class Period(NamedTuple):
    start: datetime
    end: datetime
    key: str  # what usage counted in it is stored under (entitlement_usage[feature]["period"])


def period_key(start: datetime) -> str:
    return start.strftime("%Y-%m-%dT%H:%M:%SZ")


def stepped_period(anchor: datetime, now: datetime) -> tuple[datetime, datetime]:
    """The billing period containing `now` of a subscription whose known period ends at `anchor`.

    Stripe bills monthly from the anchor of the known period end; stepping whole months from
    it still finds the right period when the renewal's webhook is late.
    """
    months = (now.year - anchor.year) * 12 + now.month - anchor.month
    while _add_months(anchor, months) <= now:
        months += 1
    while _add_months(anchor, months - 1) > now:
        months -= 1
    return _add_months(anchor, months - 1), _add_months(anchor, months)


def _add_months(anchor: datetime, months: int) -> datetime:
    index = anchor.month - 1 + months
    year, month = anchor.year + index // 12, index % 12 + 1
    # Stripe keeps a 31st anchor at the end of shorter months.
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


class PeriodCache:
    """The last period found per anchor, and the last calendar month.

    Exact, not approximate: the periods of one anchor follow each other without gap or overlap
    (each starts where the previous ends), so the one kept contains `now` only if it is the one
    stepping would find. Only UTC anchors are kept (every stored period end is UTC): the answer
    keeps the anchor's time zone, which an equal anchor in another zone would not share.
    """

    __slots__ = ("_by_anchor", "_month")

    def __init__(self) -> None:
        self._by_anchor: dict[datetime, Period] = {}
        self._month: Period | None = None

    def subscription(self, anchor: datetime, now: datetime) -> Period:
        cacheable = anchor.tzinfo is UTC
        if cacheable:
            kept = self._by_anchor.get(anchor)
            if kept is not None and kept.start <= now < kept.end:
                return kept
        start, end = stepped_period(anchor, now)
        found = Period(start, end, period_key(start))
        if cacheable:
            if len(self._by_anchor) >= MAX_ANCHORS:
                self._by_anchor.clear()
            self._by_anchor[anchor] = found
        return found

    def month(self, now: datetime) -> Period:
        kept = self._month
        if kept is not None and now.tzinfo is not None and kept.start <= now < kept.end:
            return kept
        start, end = allowance_period(now)
        found = self._month = Period(start, end, period_key(start))
        return found


_CACHE = PeriodCache()


def current_period(user: Any, now: datetime) -> Period:
    """The period metered usage counts in: the Stripe billing period for subscribers, else the
    calendar month (UTC)."""
    end = user.subscription_period_end
    if end is None or not (user.stripe_subscription_id and is_paying(user.subscription_status)):
        return _CACHE.month(now)
    return _CACHE.subscription(end, now)


def usage_period(user: Any, now: datetime) -> tuple[datetime, datetime]:
    """When the period metered usage counts in at `now` starts and ends."""
    start, end, _ = current_period(user, now)
    return start, end

"""`collect_entitlement_metrics`: plan breakdown, expiring trials, payment and credit rollups.

Three aggregate statements (users, payments, credit ledger), however many rows there are: the
dashboards poll this, so its cost must not grow with the customer base.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.catalog.model import Catalog
from resolvers.errors import InvalidInput
from resolvers.kinds import LedgerKind, PaymentStatus
from resolvers.models import CreditEvent, Payment, User

DEFAULT_DAYS = 7
MAX_DAYS = 366
# Payments in these states never took money, so they are not payment volume.
UNPAID_STATUSES = (PaymentStatus.FAILED, PaymentStatus.PENDING, PaymentStatus.CANCELED)


@dataclass(frozen=True)
class TierCount:
    tier: str
    count: int


@dataclass(frozen=True)
class CurrencyAmount:
    currency: str
    amount: int  # minor units


@dataclass(frozen=True)
class UserMetrics:
    total: int
    plans: tuple[TierCount, ...]  # every catalog tier in rank order, then any unknown tier
    trials_expiring: int  # trials ending within the window ahead of now


@dataclass(frozen=True)
class PaymentMetrics:
    """Payments created in the window that took money (refunded ones included)."""

    count: int
    gross_by_currency: tuple[CurrencyAmount, ...]
    refunds: int  # of those payments, how many were refunded in part or in full since
    refunded_by_currency: tuple[CurrencyAmount, ...]
    disputes: int
    credit_packs: int
    subscriptions: int


@dataclass(frozen=True)
class CreditMetrics:
    """Ledger movements in the window; every figure is a positive number of credits."""

    granted: int
    consumed: int
    expired: int
    revoked: int


@dataclass(frozen=True)
class EntitlementMetrics:
    days: int
    since: datetime
    until: datetime
    users: UserMetrics
    payments: PaymentMetrics
    credits: CreditMetrics

    def as_dict(self) -> dict[str, Any]:
        """The JSON document the CLI prints and the runbook's snippet indexes."""
        return {
            "window": {
                "days": self.days,
                "since": self.since.isoformat(),
                "until": self.until.isoformat(),
            },
            "users": _plain(self.users),
            "payments": _plain(self.payments),
            "credits": _plain(self.credits),
        }

    def __getitem__(self, key: str) -> Any:
        # The runbook reads `metrics["users"]["plans"]`; keep that snippet working as written.
        return self.as_dict()[key]


def _plain(figures: object) -> dict[str, Any]:
    """A figures dataclass as JSON-shaped data: lists, not tuples."""
    return asdict(figures, dict_factory=lambda items: {k: _listed(v) for k, v in items})


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def check_days(days: int) -> InvalidInput | None:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        return InvalidInput(field="days", reason=f"must be a whole number from 1 to {MAX_DAYS}")
    return None


async def collect_entitlement_metrics(
    session: AsyncSession, *, now: datetime, days: int = DEFAULT_DAYS, catalog: Catalog
) -> EntitlementMetrics | InvalidInput:
    """Users by tier and expiring trials now, payments and credits over the last `days` days."""
    if failure := check_days(days):
        return failure
    since = now - timedelta(days=days)
    return EntitlementMetrics(
        days=days,
        since=since,
        until=now,
        users=await _user_metrics(
            session, now=now, horizon=now + timedelta(days=days), catalog=catalog
        ),
        payments=await _payment_metrics(session, since=since, until=now),
        credits=await _credit_metrics(session, since=since, until=now),
    )


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    # SUM(CASE …) rather than COUNT(*) FILTER (…): one spelling for SQLite and PostgreSQL.
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _sum_if(condition: ColumnElement[bool], value: ColumnElement[int]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, value), else_=0)), 0)


async def _user_metrics(
    session: AsyncSession, *, now: datetime, horizon: datetime, catalog: Catalog
) -> UserMetrics:
    expiring = and_(User.trial_ends_at > now, User.trial_ends_at <= horizon)
    rows = (
        await session.execute(
            select(User.tier, func.count(), _count_if(expiring)).group_by(User.tier)
        )
    ).all()
    counts = {tier: int(count) for tier, count, _ in rows}
    unknown = sorted(set(counts) - set(catalog.tier_codes))
    return UserMetrics(
        total=sum(counts.values()),
        plans=tuple(
            TierCount(tier, counts.get(tier, 0)) for tier in (*catalog.tier_codes, *unknown)
        ),
        trials_expiring=sum(int(expiring_count) for _, _, expiring_count in rows),
    )


async def _payment_metrics(
    session: AsyncSession, *, since: datetime, until: datetime
) -> PaymentMetrics:
    rows = (
        await session.execute(
            select(
                Payment.currency,
                func.count(),
                func.coalesce(func.sum(Payment.amount), 0),
                _count_if(Payment.amount_refunded > 0),
                func.coalesce(func.sum(Payment.amount_refunded), 0),
                _count_if(Payment.status == PaymentStatus.DISPUTED),
                _count_if(Payment.kind == "credit_pack"),
                _count_if(Payment.kind == "subscription"),
            )
            .where(
                Payment.created_at > since,
                Payment.created_at <= until,
                Payment.status.not_in(UNPAID_STATUSES),
            )
            .group_by(Payment.currency)
            .order_by(Payment.currency)
        )
    ).all()
    # PostgreSQL sums BIGINT into NUMERIC (a Decimal here): int() makes both backends alike.
    return PaymentMetrics(
        count=sum(int(row[1]) for row in rows),
        gross_by_currency=tuple(CurrencyAmount(row[0], int(row[2])) for row in rows),
        refunds=sum(int(row[3]) for row in rows),
        refunded_by_currency=tuple(CurrencyAmount(row[0], int(row[4])) for row in rows if row[4]),
        disputes=sum(int(row[5]) for row in rows),
        credit_packs=sum(int(row[6]) for row in rows),
        subscriptions=sum(int(row[7]) for row in rows),
    )


async def _credit_metrics(
    session: AsyncSession, *, since: datetime, until: datetime
) -> CreditMetrics:
    granted, consumed, expired, revoked = (
        await session.execute(
            select(
                _sum_if(CreditEvent.kind == LedgerKind.GRANT, CreditEvent.amount),
                _sum_if(CreditEvent.kind == LedgerKind.CONSUME, -CreditEvent.amount),
                _sum_if(CreditEvent.kind == LedgerKind.EXPIRE, -CreditEvent.amount),
                _sum_if(CreditEvent.kind == LedgerKind.REVOKE, -CreditEvent.amount),
            ).where(CreditEvent.created_at > since, CreditEvent.created_at <= until)
        )
    ).one()
    return CreditMetrics(
        granted=int(granted), consumed=int(consumed), expired=int(expired), revoked=int(revoked)
    )

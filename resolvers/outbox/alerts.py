"""Balance alerts: credits.low_balance and credits.depleted, told once per crossing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.catalog.model import Catalog
from resolvers.errors import InvalidInput, UserNotFound
from resolvers.models import BalanceAlert, User
from resolvers.outbox.events import EventType, OutboxConfig, enqueue_event
from resolvers.users import UserRef, find_user

MAX_THRESHOLD = 1_000_000_000


@dataclass(frozen=True)
class BalanceNow:
    """A user's available credits at the end of a transaction that changed them."""

    user_id: int
    email: str
    available: int
    request_id: str | None


async def check_balance_alerts(
    session: AsyncSession,
    balance: BalanceNow,
    *,
    config: OutboxConfig,
    catalog: Catalog,
    now: datetime,
) -> None:
    """Queue low_balance / depleted when the balance has just gone under, re-arm when above.

    The state is kept per user rather than compared with the balance before the change: a
    transaction of several changes, or a balance that hovers, is then told once per crossing.
    """
    row = (
        await session.execute(
            select(User.tier, BalanceAlert)
            .outerjoin(BalanceAlert, BalanceAlert.user_id == User.id)
            .where(User.id == balance.user_id)
        )
    ).one()
    alert: BalanceAlert | None = row[1]
    threshold = low_balance_threshold(catalog, row.tier, alert)
    is_low = balance.available < threshold
    is_depleted = balance.available == 0
    was_low = alert.is_low if alert else False
    was_depleted = alert.is_depleted if alert else False
    if (is_low, is_depleted) == (was_low, was_depleted):
        return
    user = {"id": balance.user_id, "email": balance.email}
    if is_low and not was_low:
        data = {"available": balance.available, "threshold": threshold}
        await _tell(session, config, EventType.LOW_BALANCE, user, data, now, balance.request_id)
    if is_depleted and not was_depleted:
        data = {"available": 0}
        await _tell(session, config, EventType.DEPLETED, user, data, now, balance.request_id)
    if alert is None:
        alert = BalanceAlert(user_id=balance.user_id, low_balance_threshold=None)
        session.add(alert)
    alert.is_low = is_low
    alert.is_depleted = is_depleted
    alert.updated_at = now


def low_balance_threshold(catalog: Catalog, tier: str, alert: BalanceAlert | None) -> int:
    """Support's per-user threshold, else the tier's; 0 tells no low balance."""
    if alert is not None and alert.low_balance_threshold is not None:
        return alert.low_balance_threshold
    found = catalog.tier(tier)
    return found.low_balance_threshold if found is not None else 0


async def _tell(
    session: AsyncSession,
    config: OutboxConfig,
    type: EventType,
    user: dict[str, Any],
    data: dict[str, Any],
    now: datetime,
    request_id: str | None,
) -> None:
    await enqueue_event(
        session, config=config, type=type, user=user, data=data, now=now, request_id=request_id
    )


@dataclass(frozen=True)
class ThresholdSet:
    user: User
    threshold: int | None  # None: the tier's from the catalog again


async def set_low_balance_threshold(
    session: AsyncSession, *, user: UserRef, threshold: int | None, now: datetime
) -> ThresholdSet | UserNotFound | InvalidInput:
    """Support's per-user credits.low_balance threshold; None goes back to the tier's.

    It applies from the user's next credit change on: a balance already under a raised
    threshold is told of then.
    """
    if threshold is not None and not 0 <= threshold <= MAX_THRESHOLD:
        return InvalidInput(field="threshold", reason=f"must be from 0 to {MAX_THRESHOLD}")
    row = await find_user(session, user, lock=True)
    if row is None:
        return UserNotFound(email=user.email, user_id=user.user_id)
    alert = await session.get(BalanceAlert, row.id)
    if alert is None:
        alert = BalanceAlert(user_id=row.id, is_low=False, is_depleted=False)
        session.add(alert)
    alert.low_balance_threshold = threshold
    alert.updated_at = now
    return ThresholdSet(user=row, threshold=threshold)

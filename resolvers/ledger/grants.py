"""A user's grants as rows: the burn order, taking from them and giving back, the soonest expiry.

Nothing here touches a balance: resolvers.ledger.entries moves the balance on the user row
together with these rows, under the user's lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.models import CreditGrant
from resolvers.prepared import execute

GRANTS = CreditGrant.__table__


def take_from(grants: Iterable[Any], amount: int) -> tuple[list[list[int]], int]:
    """Take up to `amount` from the grants in the order given: ([[grant id, taken]], not taken).

    Grants are rows (`id`, `remaining`); nothing is changed on them.
    """
    allocations: list[list[int]] = []
    left = amount
    for grant in grants:
        if left == 0:
            break
        take = min(left, grant.remaining)
        allocations.append([grant.id, take])
        left -= take
    return allocations, left


async def take_grants(
    session: AsyncSession, grants: Sequence[Any], allocations: list[list[int]]
) -> None:
    """Lower the grants' remaining amounts by what `allocations` took from them."""
    remaining = {grant.id: grant.remaining for grant in grants}
    await execute(
        session,
        _SET_REMAINING,
        [{"grant_id": gid, "left": remaining[gid] - taken} for gid, taken in allocations],
    )


async def give_back(session: AsyncSession, allocations: list[list[int]]) -> datetime | None:
    """Raise the grants' remaining amounts by `allocations`; the soonest expiry among them."""
    await execute(session, _GIVE_BACK, [{"grant_id": gid, "back": n} for gid, n in allocations])
    grant_ids = [gid for gid, _ in allocations]
    return (await execute(session, _SOONEST_OF, {"grant_ids": grant_ids})).scalar_one()


async def insert_grant(session: AsyncSession, values: dict[str, Any]) -> int:
    return (await execute(session, _INSERT_GRANT, values)).scalar_one()


async def spendable_grants(session: AsyncSession, user_id: int) -> Sequence[Any]:
    """The user's grants with credits left, in the burn order."""
    return (await execute(session, _SPENDABLE, {"user_id": user_id})).all()


async def payment_grants(session: AsyncSession, user_id: int, payment_id: int) -> Sequence[Any]:
    """What is left of the grants one payment bought, oldest first."""
    params = {"user_id": user_id, "payment_id": payment_id}
    return (await execute(session, _PAYMENT_GRANTS, params)).all()


async def expired_grants(session: AsyncSession, user_id: int, now: datetime) -> Sequence[Any]:
    """The user's grants with credits left whose expiry has passed, soonest first."""
    return (await execute(session, _EXPIRED, {"user_id": user_id, "now": now})).all()


async def empty_grants(session: AsyncSession, grants: Sequence[Any]) -> None:
    await execute(session, _SET_REMAINING, [{"grant_id": g.id, "left": 0} for g in grants])


async def next_expiry(session: AsyncSession, user_id: int, now: datetime) -> datetime | None:
    return (await execute(session, _NEXT_EXPIRY, {"user_id": user_id, "now": now})).scalar_one()


# Built once: building a statement costs more than running SQLAlchemy's cached compile of it.
# The burn order: soonest expiry first (no expiry last), free before purchased, oldest first.
_SPENDABLE = (
    select(GRANTS.c.id, GRANTS.c.remaining, GRANTS.c.expires_at)
    .where(GRANTS.c.user_id == bindparam("user_id"), GRANTS.c.remaining > 0)
    .order_by(
        GRANTS.c.expires_at.asc().nulls_last(),
        GRANTS.c.is_purchased,
        GRANTS.c.created_at,
        GRANTS.c.id,
    )
)
_PAYMENT_GRANTS = (
    select(GRANTS.c.id, GRANTS.c.remaining)
    .where(
        GRANTS.c.user_id == bindparam("user_id"),
        GRANTS.c.payment_id == bindparam("payment_id"),
        GRANTS.c.remaining > 0,
    )
    .order_by(GRANTS.c.id)
)
_EXPIRED = (
    select(GRANTS.c.id, GRANTS.c.remaining)
    .where(
        GRANTS.c.user_id == bindparam("user_id"),
        GRANTS.c.remaining > 0,
        GRANTS.c.expires_at <= bindparam("now", type_=GRANTS.c.expires_at.type),
    )
    .order_by(GRANTS.c.expires_at, GRANTS.c.id)
)
_NEXT_EXPIRY = select(func.min(GRANTS.c.expires_at)).where(
    GRANTS.c.user_id == bindparam("user_id"),
    GRANTS.c.remaining > 0,
    GRANTS.c.expires_at > bindparam("now", type_=GRANTS.c.expires_at.type),
)
_INSERT_GRANT = insert(GRANTS).returning(GRANTS.c.id)
_SET_REMAINING = (
    update(GRANTS).where(GRANTS.c.id == bindparam("grant_id")).values(remaining=bindparam("left"))
)
_GIVE_BACK = (
    update(GRANTS)
    .where(GRANTS.c.id == bindparam("grant_id"))
    .values(remaining=GRANTS.c.remaining + bindparam("back"))
)
_SOONEST_OF = select(func.min(GRANTS.c.expires_at)).where(
    GRANTS.c.id.in_(bindparam("grant_ids", expanding=True))
)

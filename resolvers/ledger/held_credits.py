"""Where held credits sit: a hold row's closing, and credits going back to their grants.

The building blocks of resolvers.ledger.holds and of `expire_credits`; callers hold the user lock.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.ledger.accounts import Account
from resolvers.models import CreditGrant, CreditHold

GRANTS = CreditGrant.__table__
HOLDS = CreditHold.__table__


async def close_hold(
    session: AsyncSession,
    hold_id: int,
    *,
    status: str,
    closed_at: datetime,
    settled_amount: int | None = None,
) -> None:
    conn = await session.connection()
    params = {"hold_id": hold_id, "status": status, "closed_at": closed_at}
    await conn.execute(_CLOSE_HOLD, {**params, "settled_amount": settled_amount})


async def return_to_grants(
    session: AsyncSession, user: Account, allocations: list[list[int]]
) -> None:
    """Put held credits back on the grants they came from, which keep their expiry.

    A grant that expired meanwhile gets them back too, and the soonest expiry on the row says
    so: the caller's next `expire_credits` writes them off.
    """
    if not allocations:
        return
    conn = await session.connection()
    await conn.execute(_GIVE_BACK, [{"grant_id": gid, "back": n} for gid, n in allocations])
    soonest = (
        await conn.execute(_SOONEST_OF, {"grant_ids": [gid for gid, _ in allocations]})
    ).scalar_one()
    user.credits_available += sum(n for _, n in allocations)
    if soonest is not None and (
        user.credits_next_expiry is None or soonest < user.credits_next_expiry
    ):
        user.credits_next_expiry = soonest


async def next_hold_expiry(session: AsyncSession, user_id: int) -> datetime | None:
    conn = await session.connection()
    return (await conn.execute(_NEXT_HOLD_EXPIRY, {"user_id": user_id})).scalar_one()


_NEXT_HOLD_EXPIRY = select(func.min(HOLDS.c.expires_at)).where(
    HOLDS.c.user_id == bindparam("user_id"), HOLDS.c.status == "active"
)
_CLOSE_HOLD = (
    update(HOLDS)
    .where(HOLDS.c.id == bindparam("hold_id"))
    .values(
        status=bindparam("status"),
        closed_at=bindparam("closed_at", type_=HOLDS.c.closed_at.type),
        settled_amount=bindparam("settled_amount"),
    )
)
_GIVE_BACK = (
    update(GRANTS)
    .where(GRANTS.c.id == bindparam("grant_id"))
    .values(remaining=GRANTS.c.remaining + bindparam("back"))
)
_SOONEST_OF = select(func.min(GRANTS.c.expires_at)).where(
    GRANTS.c.id.in_(bindparam("grant_ids", expanding=True))
)

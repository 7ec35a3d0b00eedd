"""Hold rows: closing one, and the soonest expiry of a user's active holds.

The building blocks of resolvers.ledger.holds and of `expire_credits`; callers hold the user lock.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.models import CreditHold
from resolvers.prepared import execute

HOLDS = CreditHold.__table__


async def close_hold(
    session: AsyncSession,
    hold_id: int,
    *,
    status: str,
    closed_at: datetime,
    settled_amount: int | None = None,
) -> None:
    params = {"hold_id": hold_id, "status": status, "closed_at": closed_at}
    await execute(session, _CLOSE_HOLD, {**params, "settled_amount": settled_amount})


async def next_hold_expiry(session: AsyncSession, user_id: int) -> datetime | None:
    return (await execute(session, _NEXT_HOLD_EXPIRY, {"user_id": user_id})).scalar_one()


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

"""The dispatch lease on SQLite: one process dispatches until its lease runs out or is dropped.

PostgreSQL uses a session advisory lock instead, which dies with its connection; SQLite has
none, so a lease with an expiry lets another process take over from one that was killed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.models import OutboxLease

DISPATCH = "dispatch"


async def take_lease(
    session: AsyncSession, *, holder: str, now: datetime, ttl: timedelta, name: str = DISPATCH
) -> bool:
    """Take or renew the lease for `ttl`: whether `holder` has it now.

    The row is made on first use; both statements run under SQLite's write lock (the unit of
    work's BEGIN IMMEDIATE), so two processes cannot both see the lease free.
    """
    await session.execute(
        sqlite_insert(OutboxLease).values(name=name, holder=None).on_conflict_do_nothing()
    )
    taken = await session.execute(
        update(OutboxLease)
        .where(
            OutboxLease.name == name,
            or_(
                OutboxLease.holder.is_(None),
                OutboxLease.holder == holder,
                OutboxLease.expires_at <= now,
            ),
        )
        .values(holder=holder, expires_at=now + ttl)
    )
    return taken.rowcount == 1  # type: ignore[attr-defined]


async def drop_lease(session: AsyncSession, *, holder: str, name: str = DISPATCH) -> None:
    await session.execute(
        update(OutboxLease)
        .where(OutboxLease.name == name, OutboxLease.holder == holder)
        .values(holder=None, expires_at=None)
    )

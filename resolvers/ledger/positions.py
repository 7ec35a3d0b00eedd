"""The ledger position: the id of a user's newest ledger event, what a balance reflects.

Every change of a balance (grant, spend, hold, settlement, release, expiry) writes a ledger event
under the user's row lock, so a user's position only grows, in commit order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from resolvers.models import CreditEvent, EntitlementOverride, TierChange, UsageEvent, User

USERS = User.__table__
EVENTS = CreditEvent.__table__
_KEYS = bindparam("keys", expanding=True)
# The append-only tables whose rows change a balance or an entitlement.
_CHANGE_TABLES = (EVENTS, TierChange.__table__, UsageEvent.__table__, EntitlementOverride.__table__)

_POSITION = select(func.max(EVENTS.c.id)).where(EVENTS.c.user_id == USERS.c.id).scalar_subquery()
# One statement, so the row and the position come from one snapshot.
_ACCOUNTS_AT_POSITION = select(USERS, _POSITION.label("ledger_position")).where(
    USERS.c.id.in_(_KEYS)
)
_POSITIONS = (
    select(EVENTS.c.user_id, func.max(EVENTS.c.id).label("position"))
    .where(EVENTS.c.user_id.in_(_KEYS))
    .group_by(EVENTS.c.user_id)
)
_MARKS = select(*(select(func.max(t.c.id)).scalar_subquery() for t in _CHANGE_TABLES))


@dataclass(frozen=True)
class AccountAt:
    """A user's row and the ledger position it reflects (None: no ledger event yet)."""

    row: Any
    position: int | None


async def accounts_at_position(
    conn: AsyncConnection, user_ids: Sequence[int]
) -> dict[int, AccountAt]:
    """The users' rows, each with its ledger position; users that do not exist are left out."""
    rows = await conn.execute(_ACCOUNTS_AT_POSITION, {"keys": list(user_ids)})
    return {row.id: AccountAt(row=row, position=row.ledger_position) for row in rows}


async def ledger_positions(conn: AsyncConnection, user_ids: Sequence[int]) -> list[int | None]:
    """Each user's ledger position, for the dataloader of `CreditBalance.asOf`."""
    rows = await conn.execute(_POSITIONS, {"keys": list(user_ids)})
    found = {row.user_id: row.position for row in rows}
    return [found.get(i) for i in user_ids]


async def change_marks(conn: AsyncConnection) -> tuple[int, ...]:
    """The newest id of each change table: one cheap statement that tells whether anything
    was committed since the last look (SQLite commits one writer at a time, in id order)."""
    row = (await conn.execute(_MARKS)).one()
    return tuple(mark or 0 for mark in row)


async def users_changed_since(conn: AsyncConnection, marks: Sequence[int]) -> set[int]:
    """Users with a change table row newer than `marks` (as `change_marks` returned them)."""
    changed: set[int] = set()
    for table, mark in zip(_CHANGE_TABLES, marks, strict=True):
        query = select(table.c.user_id).where(table.c.id > mark).distinct()
        changed.update((await conn.execute(query)).scalars())
    return changed

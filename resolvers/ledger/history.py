"""Balances in time: a user's credits as they stood at any past moment, rebuilt from the ledger.

The ledger records when a change was written; an expiry counts from the grant's or the hold's
`expires_at`, even when the write-off or the sweep was recorded later. A plan allowance that
was due but not yet written at that moment is not counted: a past balance is what the ledger
held then.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.models import CreditEvent, CreditGrant, CreditHold

GRANTS = CreditGrant.__table__
EVENTS = CreditEvent.__table__
HOLDS = CreditHold.__table__
# The kinds whose allocations took credits off grants for good.
_SPENDING_KINDS = ("consume", "revoke", "settle")


@dataclass(frozen=True)
class GrantAt:
    grant: Any  # the credit_grants row
    remaining: int


@dataclass(frozen=True)
class BalanceAt:
    """The balance at `at`: available and held credits, the grants with credits, active holds."""

    at: datetime
    available: int
    held: int
    grants: list[GrantAt]
    holds: list[Any]  # credit_holds rows active at `at`
    as_of: int | None  # the last ledger event written at or before `at`

    @property
    def next_expiry(self) -> datetime | None:
        return min((g.grant.expires_at for g in self.grants if g.grant.expires_at), default=None)


def is_held_at(hold: Any, at: datetime) -> bool:
    """Whether a hold kept its credits at `at`: made by then, not closed and not run out."""
    end = hold.expires_at if hold.closed_at is None else min(hold.closed_at, hold.expires_at)
    return hold.created_at <= at < end


async def balance_at(session: AsyncSession, user_id: int, at: datetime) -> BalanceAt:
    """The user's balance as it stood at `at`; before the user existed, an empty one."""
    conn = await session.connection()
    params = {"user_id": user_id, "at": at}
    grants = (await conn.execute(_GRANTS_AT, params)).all()
    spent = (await conn.execute(_SPENT_AT, params)).all()
    holds = [h for h in (await conn.execute(_HOLDS_AT, params)).all() if is_held_at(h, at)]
    as_of = (await conn.execute(_LAST_EVENT_AT, params)).scalar_one()
    remaining = {g.id: g.amount for g in grants}
    for taken in [*(e.allocations or [] for e in spent), *(h.allocations for h in holds)]:
        for grant_id, credits in taken:
            remaining[grant_id] -= credits
    alive = [
        GrantAt(grant=g, remaining=remaining[g.id])
        for g in grants
        if remaining[g.id] > 0 and (g.expires_at is None or g.expires_at > at)
    ]
    return BalanceAt(
        at=at,
        available=sum(g.remaining for g in alive),
        held=sum(h.amount for h in holds),
        grants=alive,
        holds=holds,
        as_of=as_of,
    )


_AT = bindparam("at", type_=GRANTS.c.created_at.type)
_GRANTS_AT = (
    select(GRANTS)
    .where(GRANTS.c.user_id == bindparam("user_id"), GRANTS.c.created_at <= _AT)
    .order_by(GRANTS.c.expires_at.asc().nulls_last(), GRANTS.c.id)
)
_SPENT_AT = select(EVENTS.c.allocations).where(
    EVENTS.c.user_id == bindparam("user_id"),
    EVENTS.c.created_at <= _AT,
    EVENTS.c.kind.in_(_SPENDING_KINDS),
)
_HOLDS_AT = (
    select(HOLDS)
    .where(HOLDS.c.user_id == bindparam("user_id"), HOLDS.c.created_at <= _AT)
    .order_by(HOLDS.c.expires_at, HOLDS.c.id)
)
_LAST_EVENT_AT = select(func.max(EVENTS.c.id)).where(
    EVENTS.c.user_id == bindparam("user_id"), EVENTS.c.created_at <= _AT
)


async def events_between(
    session: AsyncSession,
    user_id: int,
    *,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    before_id: int | None,
) -> list[Any]:
    """The user's ledger events written in [since, until), newest first, below a cursor."""
    stmt = select(EVENTS).where(EVENTS.c.user_id == user_id)
    if since is not None:
        stmt = stmt.where(EVENTS.c.created_at >= since)
    if until is not None:
        stmt = stmt.where(EVENTS.c.created_at < until)
    if before_id is not None:
        stmt = stmt.where(EVENTS.c.id < before_id)
    conn = await session.connection()
    return list((await conn.execute(stmt.order_by(EVENTS.c.id.desc()).limit(limit))).all())

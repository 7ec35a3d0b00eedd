"""Credit holds: reserve credits before a call priced only after it ends, then settle or release.

A hold takes credits off the user's grants in the burn order (the spend rule, `hold_grants`)
and keeps them aside: out of `available`, still the user's. Settling spends up to the amount
held, from those same grants' credits, even if the grants expired meanwhile; what is not
settled, a release, or a hold that ran out of time puts the credits back on their grants,
which keep their expiry. The ledger sum is what the user owns: a hold writes an event of 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.catalog.model import Catalog
from resolvers.errors import (
    HoldExpired,
    HoldNotActive,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
    UserNotFound,
)
from resolvers.ledger.accounts import Account, lock_account, save_account
from resolvers.ledger.allowances import refresh_balance
from resolvers.ledger.credits import CreditChanged
from resolvers.ledger.entries import (
    HOLDS,
    Actor,
    LedgerEvent,
    append_event,
    check_amount,
    check_change_args,
    expire_credits,
    find_keyed_event,
    hold_grants,
    unhold,
)
from resolvers.ledger.grants import take_from
from resolvers.ledger.held_credits import close_hold, next_hold_expiry
from resolvers.ledger.idempotency import fingerprint
from resolvers.models import parse_row_id
from resolvers.prepared import execute
from resolvers.users import UserRef

DEFAULT_TTL_SECONDS = 300
MAX_TTL_SECONDS = 86_400
STATUSES = ("active", "settled", "released", "expired")


@dataclass(frozen=True)
class Hold:
    """One `credit_holds` row."""

    id: int
    user_id: int
    amount: int
    reason: str
    status: str
    allocations: list[list[int]]
    settled_amount: int | None
    expires_at: datetime
    created_at: datetime
    closed_at: datetime | None

    def status_at(self, now: datetime) -> str:
        """The status a reader sees: an active hold past its expiry is expired, swept or not."""
        return "expired" if self.status == "active" and self.expires_at <= now else self.status


@dataclass(frozen=True)
class HoldChanged:
    """A reserve or a release that went through (or, `replayed`, had gone through before)."""

    user: Account
    hold: Hold
    event: LedgerEvent | None
    replayed: bool = False


def check_ttl(ttl_seconds: int) -> InvalidInput | None:
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        return InvalidInput(field="ttlSeconds", reason="must be a whole number of seconds")
    if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
        return InvalidInput(field="ttlSeconds", reason=f"must be 1 to {MAX_TTL_SECONDS:,} seconds")
    return None


async def reserve_credits(
    session: AsyncSession,
    *,
    user: UserRef,
    amount: int,
    reason: str,
    actor: Actor,
    now: datetime,
    catalog: Catalog,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    idempotency_key: str | None = None,
) -> HoldChanged | InsufficientCredits | UserNotFound | InvalidInput | IdempotencyConflict:
    """Hold `amount` credits for `ttl_seconds`, taken from the grants in the burn order."""
    if failure := (
        check_amount(amount)
        or check_change_args(reason=reason, actor=actor, idempotency_key=idempotency_key)
        or check_ttl(ttl_seconds)
    ):
        return failure
    row = await lock_account(session, user, idempotency_key=idempotency_key)
    if row is None:
        return user.not_found()
    digest = fingerprint("reserve", user=row.id, amount=amount, reason=reason, ttl=ttl_seconds)
    keyed = await find_keyed_event(session, row, idempotency_key, digest)
    if isinstance(keyed, IdempotencyConflict):
        return keyed
    if keyed is not None:
        assert keyed.hold_id is not None, "a reserve's digest is only ever on a hold event"
        hold = await find_hold(session, keyed.hold_id)
        assert hold is not None
        return HoldChanged(user=row, hold=hold, event=keyed, replayed=True)
    await refresh_balance(session, row, catalog=catalog, now=now, actor=actor)
    if row.credits_available < amount:
        return InsufficientCredits(available=row.credits_available, requested=amount)
    expires_at = now + timedelta(seconds=ttl_seconds)
    allocations = await hold_grants(session, row, amount, now=now, until=expires_at)
    values: dict[str, Any] = {
        "user_id": row.id,
        "amount": amount,
        "reason": reason,
        "status": "active",
        "allocations": allocations,
        "settled_amount": None,
        "expires_at": expires_at,
        "created_at": now,
        "closed_at": None,
    }
    hold_id = (await execute(session, _INSERT_HOLD, values)).scalar_one()
    await save_account(session, row)
    event = await append_event(
        session,
        row,
        kind="hold",
        amount=0,
        reason=reason,
        actor=actor,
        now=now,
        idempotency_key=idempotency_key,
        digest=digest,
        allocations=allocations,
        hold_id=hold_id,
    )
    return HoldChanged(user=row, hold=Hold(id=hold_id, **values), event=event)


async def settle_hold(
    session: AsyncSession,
    *,
    hold_id: str | int,
    amount: int,
    actor: Actor,
    now: datetime,
    reason: str | None = None,
    idempotency_key: str | None = None,
) -> (
    CreditChanged
    | HoldNotFound
    | HoldNotActive
    | HoldExpired
    | InvalidInput
    | IdempotencyConflict
    | UserNotFound
):
    """Spend `amount` (0 to the amount held) of an active hold; the rest goes back."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        return InvalidInput(field="amount", reason="must be a whole number of credits, 0 or more")
    if failure := check_change_args(
        reason="settled" if reason is None else reason,
        actor=actor,
        idempotency_key=idempotency_key,
    ):
        return failure
    located = await _lock_owner(session, hold_id, idempotency_key)
    if not isinstance(located, tuple):
        return located
    row, hold = located
    digest = fingerprint("settle", hold=hold.id, amount=amount, reason=reason)
    keyed = await find_keyed_event(session, row, idempotency_key, digest)
    if isinstance(keyed, IdempotencyConflict):
        return keyed
    if keyed is not None:
        return CreditChanged(user=row, event=keyed, replayed=True)
    if hold.status != "active":
        return HoldNotActive(hold_id=hold.id, status=hold.status)
    if hold.expires_at <= now:
        return HoldExpired(hold_id=hold.id, expires_at=hold.expires_at)
    if amount > hold.amount:
        return InvalidInput(field="amount", reason=f"must be at most the {hold.amount} held")
    await expire_credits(session, row, now=now, actor=actor)
    paid, _ = take_from(_Allocation.rows(hold.allocations), amount)
    spent = dict(paid)
    rest = [[gid, n - spent.get(gid, 0)] for gid, n in hold.allocations if n > spent.get(gid, 0)]
    await close_hold(session, hold.id, status="settled", closed_at=now, settled_amount=amount)
    await unhold(session, row, held=hold.amount, back=rest)
    row.holds_next_expiry = await next_hold_expiry(session, row.id)
    row.updated_at = now
    await save_account(session, row)
    event = await append_event(
        session,
        row,
        kind="settle",
        amount=-amount,
        reason=hold.reason if reason is None else reason,
        actor=actor,
        now=now,
        idempotency_key=idempotency_key,
        digest=digest,
        allocations=paid,
        hold_id=hold.id,
    )
    # Credits given back to a grant that expired while they were held are lost now.
    await expire_credits(session, row, now=now, actor=actor)
    return CreditChanged(user=row, event=event)


async def release_hold(
    session: AsyncSession,
    *,
    hold_id: str | int,
    actor: Actor,
    now: datetime,
    idempotency_key: str | None = None,
) -> HoldChanged | HoldNotFound | HoldNotActive | InvalidInput | IdempotencyConflict:
    """Give an active hold's credits back to the grants they came from."""
    if failure := check_change_args(
        reason="released", actor=actor, idempotency_key=idempotency_key
    ):
        return failure
    located = await _lock_owner(session, hold_id, idempotency_key)
    if not isinstance(located, tuple):
        return located
    row, hold = located
    digest = fingerprint("release", hold=hold.id)
    keyed = await find_keyed_event(session, row, idempotency_key, digest)
    if isinstance(keyed, IdempotencyConflict):
        return keyed
    if keyed is not None:
        return HoldChanged(user=row, hold=hold, event=keyed, replayed=True)
    if hold.status_at(now) != "active":
        return HoldNotActive(hold_id=hold.id, status=hold.status_at(now))
    await expire_credits(session, row, now=now, actor=actor)
    await close_hold(session, hold.id, status="released", closed_at=now)
    await unhold(session, row, held=hold.amount, back=hold.allocations)
    row.holds_next_expiry = await next_hold_expiry(session, row.id)
    row.updated_at = now
    await save_account(session, row)
    event = await append_event(
        session,
        row,
        kind="release",
        amount=0,
        reason="hold released",
        actor=actor,
        now=now,
        idempotency_key=idempotency_key,
        digest=digest,
        allocations=hold.allocations,
        hold_id=hold.id,
    )
    await expire_credits(session, row, now=now, actor=actor)
    released = await find_hold(session, hold.id)
    assert released is not None
    return HoldChanged(user=row, hold=released, event=event)


async def find_hold(session: AsyncSession, hold_id: int) -> Hold | None:
    row = (await execute(session, _HOLD_BY_ID, {"hold_id": hold_id})).first()
    return None if row is None else Hold(**row._mapping)


async def _lock_owner(
    session: AsyncSession, hold_id: str | int, idempotency_key: str | None
) -> tuple[Account, Hold] | HoldNotFound:
    """Lock the hold's owner, then read the hold: after the lock, its status is settled."""
    parsed = parse_row_id(hold_id)
    hold = None if parsed is None else await find_hold(session, parsed)
    if hold is None:
        return HoldNotFound(hold_id=str(hold_id))
    row = await lock_account(
        session, UserRef(user_id=hold.user_id), idempotency_key=idempotency_key
    )
    assert row is not None, "a hold's user is never deleted"
    locked = await find_hold(session, hold.id)
    assert locked is not None
    return row, locked


@dataclass(frozen=True)
class _Allocation:
    """An allocation as the grant-like row `take_from` reads: settled in the order taken."""

    id: int
    remaining: int

    @classmethod
    def rows(cls, allocations: list[list[int]]) -> list[_Allocation]:
        return [cls(id=gid, remaining=n) for gid, n in allocations]


async def users_with_due_holds(
    session: AsyncSession, *, now: datetime, after_id: int, limit: int
) -> list[int]:
    """Ids of users with an active hold past its expiry, in id order: the sweep's work list."""
    rows = await execute(session, _DUE_OWNERS, {"now": now, "after_id": after_id, "limit": limit})
    return [r.user_id for r in rows]


async def expire_due_holds(
    session: AsyncSession, user_id: int, *, now: datetime, actor: Actor
) -> int:
    """Lock the user and write off what is due, their run-out holds first; holds expired."""
    row = await lock_account(session, UserRef(user_id=user_id))
    if row is None or row.holds_next_expiry is None or row.holds_next_expiry > now:
        return 0
    due = len((await execute(session, _DUE_OF_USER, {"user_id": user_id, "now": now})).all())
    await expire_credits(session, row, now=now, actor=actor)
    return due


_INSERT_HOLD = insert(HOLDS).returning(HOLDS.c.id)
_HOLD_BY_ID = select(HOLDS).where(HOLDS.c.id == bindparam("hold_id"))
_NOW = bindparam("now", type_=HOLDS.c.expires_at.type)
_DUE_OWNERS = (
    select(HOLDS.c.user_id)
    .where(HOLDS.c.status == "active", HOLDS.c.expires_at <= _NOW)
    .where(HOLDS.c.user_id > bindparam("after_id"))
    .group_by(HOLDS.c.user_id)
    .order_by(HOLDS.c.user_id)
    .limit(bindparam("limit"))
)
_DUE_OF_USER = select(HOLDS.c.id).where(
    HOLDS.c.user_id == bindparam("user_id"), HOLDS.c.status == "active", HOLDS.c.expires_at <= _NOW
)

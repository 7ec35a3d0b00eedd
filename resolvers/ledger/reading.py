"""A balance as a read shows it now: stored figures, corrected for what expired or fell due since.

Reads never write. A grant or a hold that ran out since the last write, and a monthly allowance
that is due but not granted yet, are accounted for here, from the row and the request's
batched loaders, so that what a read shows is what the next write will store.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Any

from resolvers.catalog.model import Catalog
from resolvers.ledger.allowances import PendingAllowance, pending_allowance
from resolvers.loaders import Loaders, unexpired


def available(
    user: Any, *, loaders: Loaders, catalog: Catalog, now: datetime
) -> int | Awaitable[int]:
    """Spendable credits now, with a due allowance counted as if granted.

    Answered without awaiting when nothing ran out since the last write: an awaitable costs a
    task per user in a list, and most balances need no correction.
    """
    pending = pending_allowance(user, catalog=catalog, now=now)
    due = pending.amount if pending else 0
    holds_due = user.holds_next_expiry is not None and user.holds_next_expiry <= now
    if not holds_due and (user.credits_next_expiry is None or user.credits_next_expiry > now):
        return int(user.credits_available) + due
    # A grant or a hold expired since the last write: count what is left of the grants.
    return _unexpired_total(user.id, loaders=loaders, now=now, due=due, holds_due=holds_due)


async def _unexpired_total(
    user_id: int, *, loaders: Loaders, now: datetime, due: int, holds_due: bool
) -> int:
    grants = await loaders.open_grants.load(user_id)
    total = sum(g.remaining for g in unexpired(grants, now)) + due
    if holds_due:
        # A run-out hold's credits are back on their grants from expiresAt on, swept or not.
        active = await loaders.active_holds.load(user_id)
        back = [a for h in active if h.expires_at <= now for a in h.allocations]
        expiries = await loaders.grant_expiry.load_many([gid for gid, _ in back])
        total += sum(
            n
            for (_, n), box in zip(back, expiries, strict=True)
            if box is not None and (box[0] is None or box[0] > now)
        )
    return int(total)


def held(user: Any, *, loaders: Loaders, now: datetime) -> int | Awaitable[int]:
    """Credits on holds still active now; without awaiting when no hold ran out."""
    if user.holds_next_expiry is None or user.holds_next_expiry > now:
        return int(user.credits_held)
    return _held_now(user.id, loaders=loaders, now=now)


async def _held_now(user_id: int, *, loaders: Loaders, now: datetime) -> int:
    return sum(h.amount for h in await active_holds(user_id, loaders=loaders, now=now))


async def active_holds(user_id: int, *, loaders: Loaders, now: datetime) -> list[Any]:
    """The holds active now (an active row past its expiry is not), soonest expiry first."""
    return [h for h in await loaders.active_holds.load(user_id) if h.expires_at > now]


async def open_grants(
    user: Any, *, loaders: Loaders, catalog: Catalog, now: datetime
) -> list[Any | PendingAllowance]:
    """Grant rows with credits left, soonest expiry first, and a due allowance not written yet."""
    listed: list[Any | PendingAllowance] = list(
        unexpired(await loaders.open_grants.load(user.id), now)
    )
    if pending := pending_allowance(user, catalog=catalog, now=now):
        listed.append(pending)
        listed.sort(key=lambda g: (g.expires_at is None, g.expires_at or now))
    return listed


async def next_expiry(
    user: Any, *, loaders: Loaders, catalog: Catalog, now: datetime
) -> datetime | None:
    """When credits next run out: the soonest unexpired grant, or a due allowance's end."""
    pending = pending_allowance(user, catalog=catalog, now=now)
    soonest: datetime | None = user.credits_next_expiry
    if soonest is not None and soonest <= now:
        grants = await loaders.open_grants.load(user.id)
        soonest = min((g.expires_at for g in unexpired(grants, now) if g.expires_at), default=None)
    if pending is not None and (soonest is None or pending.expires_at < soonest):
        return pending.expires_at
    return soonest

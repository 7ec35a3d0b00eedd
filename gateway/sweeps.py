"""The hold sweep: write the status and ledger entries of holds that ran out, one process at a time.

Reads already count a run-out hold's credits as available from its expiresAt; the sweep only
records it. It runs inside `entitlements serve` every SWEEP_EVERY_SECONDS and as
`entitlements holds sweep` (cron). Each user is its own transaction under the user lock, so a
sweep can stop anywhere and a user swept twice is written once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text

from gateway.db import Database
from resolvers.ledger import holds
from resolvers.ledger.entries import Actor

log = logging.getLogger("gateway.sweeps")
SWEEP_EVERY_SECONDS = 30.0
BATCH = 500
# PostgreSQL advisory lock id of the hold sweep: one gateway process sweeps, the others skip.
_SWEEP_LOCK = 0x486F6C64  # "Hold"


@dataclass(frozen=True)
class SweepReport:
    users: int
    holds: int
    skipped: bool  # another process held the sweep lock


async def sweep_holds(db: Database, *, now: datetime, actor: Actor) -> SweepReport:
    """Expire every hold past its expiry at `now`, user by user."""
    async with _sweep_lock(db) as is_mine:
        if not is_mine:
            return SweepReport(users=0, holds=0, skipped=True)
        users = expired = 0
        after_id = 0
        while True:
            async with db.read() as session:
                batch = await holds.users_with_due_holds(
                    session, now=now, after_id=after_id, limit=BATCH
                )
            if not batch:
                break
            for user_id in batch:
                expired += await db.write(
                    lambda session, user_id=user_id: holds.expire_due_holds(
                        session, user_id, now=now, actor=actor
                    )
                )
                users += 1
            after_id = batch[-1]
        return SweepReport(users=users, holds=expired, skipped=False)


@asynccontextmanager
async def _sweep_lock(db: Database) -> AsyncIterator[bool]:
    if db.is_sqlite:
        # One writer at a time is SQLite's own rule; a second sweep finds nothing left to do.
        yield True
        return
    async with db.engine.connect() as conn:
        taken = bool(
            (
                await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _SWEEP_LOCK})
            ).scalar_one()
        )
        await conn.commit()
        try:
            yield taken
        finally:
            if taken:
                # A session lock outlives the transaction: the pooled connection must let go.
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _SWEEP_LOCK})
                await conn.commit()


async def sweep_periodically(
    db: Database, clock: Callable[[], datetime], every: float = SWEEP_EVERY_SECONDS
) -> None:
    """The server's sweep loop; a failed round is logged and the next one tries again."""
    while True:
        await asyncio.sleep(every)
        actor = Actor(name="hold-sweep", source="system", request_id=f"sweep-{uuid.uuid4().hex}")
        try:
            report = await sweep_holds(db, now=clock(), actor=actor)
        except Exception:
            log.exception("hold sweep failed")
            continue
        if report.holds:
            log.info("hold sweep expired %d holds of %d users", report.holds, report.users)

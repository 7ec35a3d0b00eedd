"""The `live_watches` rows: which users this process's LISTEN connection wants to hear of.

Migration 0008's triggers notify only for a user with a row here, since every transaction that
notifies waits its turn for one global commit lock. A row names the listener by the backend pid
of its LISTEN session, so rows of a process or a connection that died can be told apart from
live ones by `pg_stat_activity`. PostgreSQL only: SQLite's processes poll.

Every statement runs on a pool connection, never on the LISTEN one: a registration may wait for
a writer's lock, and the listener must keep hearing meanwhile.
"""

from __future__ import annotations

import asyncpg

from gateway.db import Database
from gateway.listener import APPLICATION_NAME

ATTEMPTS = 3
DEADLOCK = "40P01"

# Inserted in id order and locked in id order: two registrations never wait on each other in
# a circle. The users selected (not the ids given) so that a user deleted since is left out.
_INSERT = """
INSERT INTO live_watches (user_id, listener_pid)
SELECT id, $2 FROM users WHERE id = ANY($1::int[]) ORDER BY id
ON CONFLICT DO NOTHING
"""
# Every writer locks its user's row FOR UPDATE before it writes (the ledger's rule), and FOR KEY
# SHARE conflicts with FOR UPDATE: this waits for every writer of these users still in flight
# to commit or roll back. A writer whose trigger ran before the row above existed did not
# notify; after this wait its change is committed, so the subscriber's first read, which comes
# after this transaction commits, sees it. A writer that locks after this wait runs its trigger
# after the row is committed (READ COMMITTED: each statement its own snapshot) and notifies.
_WAIT_FOR_WRITERS = "SELECT 1 FROM users WHERE id = ANY($1::int[]) ORDER BY id FOR KEY SHARE"
_DELETE = "DELETE FROM live_watches WHERE user_id = ANY($1::int[]) AND listener_pid = $2"
# A listener is gone when no LISTEN session of this database has its pid (a killed backend, a
# process that died without cleaning up). This process's previous pid is named outright: its
# backend may not have left pg_stat_activity yet.
_DELETE_GONE = """
DELETE FROM live_watches
WHERE listener_pid = $1
   OR listener_pid NOT IN (
       SELECT pid FROM pg_stat_activity
       WHERE application_name = $2 AND datname = current_database()
   )
"""
_DELETE_LISTENER = "DELETE FROM live_watches WHERE listener_pid = $1"


async def register(db: Database, listener_pid: int, user_ids: list[int]) -> None:
    """Notify `listener_pid` of these users, once every writer already under way committed.

    Returns after the commit: a subscriber reading after it misses no change.
    """
    ids = sorted(user_ids)
    for attempt in range(1, ATTEMPTS + 1):
        lent = await db.lend_driver()
        broken = True
        try:
            async with lent.driver.transaction():
                await lent.driver.execute(_INSERT, ids, listener_pid)
                await lent.driver.execute(_WAIT_FOR_WRITERS, ids)
            broken = False
            return
        except asyncpg.PostgresError as exc:
            # A writer that locks several users out of id order can deadlock with a
            # registration of many; PostgreSQL aborts one of the two, and this one tries again.
            if exc.sqlstate != DEADLOCK or attempt == ATTEMPTS:
                raise
            broken = False  # the transaction was aborted, the connection is fine
        finally:
            await lent.release(broken=broken)


async def unregister(db: Database, listener_pid: int, user_ids: list[int]) -> None:
    await _execute(db, _DELETE, sorted(user_ids), listener_pid)


async def forget_gone_listeners(db: Database, previous_pid: int | None) -> None:
    await _execute(db, _DELETE_GONE, previous_pid, APPLICATION_NAME)


async def forget_listener(db: Database, listener_pid: int) -> None:
    await _execute(db, _DELETE_LISTENER, listener_pid)


async def _execute(db: Database, statement: str, *args: object) -> None:
    lent = await db.lend_driver()
    broken = True
    try:
        await lent.driver.execute(statement, *args)
        broken = False
    finally:
        await lent.release(broken=broken)

"""Statements on the driver (resolvers.prepared) stay in the unit of work's transaction, whatever
happens to them: the first one is in it, COMMIT and ROLLBACK end it, and a cancelled or lost
connection is never lent again in the middle of one (the last two on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from gateway.db import Database, DatabaseUnavailable
from gateway.runtime import Runtime
from resolvers import prepared
from resolvers.ledger import credits
from resolvers.ledger.accounts import _LOCK_BY_ID, lock_account, save_account
from resolvers.ledger.entries import Actor
from resolvers.users import UserRef
from tests.conftest import asyncpg_dsn, kill_server_sessions
from tests.factories import make_user

SUPPORT = Actor(name="test-support", source="support", request_id="req-prepared")


@pytest.fixture
def postgresql_only(backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has no server sessions to cancel a statement in or to kill")


async def balance(url: str, user_id: int) -> int:
    """The balance as another session sees it: only what was committed."""
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(url.split(":///", 1)[1])) as db:
            query = "SELECT credits_available FROM users WHERE id = ?"
            return db.execute(query, (user_id,)).fetchone()[0]
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await conn.fetchval("SELECT credits_available FROM users WHERE id = $1", user_id)
    finally:
        await conn.close()


async def idle_in_transaction(url: str) -> int:
    if url.startswith("sqlite"):
        return 0  # no server: a transaction is the connection's, closed with it
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state LIKE 'idle in transaction%'"
        )
    finally:
        await conn.close()


async def server_session(db: Database) -> int:
    async with db.read() as session:
        return (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()


async def set_balance(db: Database, user_id: int, credits_available: int, *, commit: bool) -> None:
    """The change's every statement on the driver, the first one included; then end it."""
    async with db.read() as session:
        params = {"ref": user_id, "idempotency_key": None}
        assert prepared.is_prepared(_LOCK_BY_ID, params, db.engine.dialect)
        account = await lock_account(session, UserRef(user_id=user_id))
        assert account is not None
        account.credits_available = credits_available
        await save_account(session, account)
        await (session.commit() if commit else session.rollback())


async def test_the_first_statement_begins_the_transaction_the_session_ends(
    runtime: Runtime, database_url: str
) -> None:
    user = await make_user(runtime, credits_granted=5)

    await set_balance(runtime.db, user.id, 7, commit=False)
    assert await balance(database_url, user.id) == 5

    await set_balance(runtime.db, user.id, 9, commit=True)
    assert await balance(database_url, user.id) == 9
    assert await idle_in_transaction(database_url) == 0


@pytest.mark.usefixtures("postgresql_only")
async def test_a_change_cancelled_mid_statement_leaves_no_open_transaction_behind(
    runtime: Runtime, database_url: str
) -> None:
    user = await make_user(runtime, credits_granted=5)
    db = Database(database_url, pool_size=1)  # one connection: the next change gets it again
    blocker = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        before = await server_session(db)
        # Another session holds the user's row: the change's first statement (BEGIN sent, the
        # lock asked for) waits on it, and is cancelled there.
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user.id)
        waiting = asyncio.create_task(set_balance(db, user.id, 1, commit=True))
        await asyncio.sleep(0.5)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await lock.rollback()
        # Left mid-statement, its connection is not lent again, as SQLAlchemy's own handler
        # would have it: the next change runs on a new server session.
        assert await server_session(db) != before

        granted = await db.write(
            lambda s: credits.grant_ai_credits(
                s,
                user=UserRef(user_id=user.id),
                amount=3,
                reason="after a cancelled change",
                actor=SUPPORT,
                now=runtime.clock(),
            )
        )
        assert isinstance(granted, credits.CreditChanged)
        # Committed for everyone to see, and no session is left inside a transaction.
        assert await balance(database_url, user.id) == 8
        assert await idle_in_transaction(database_url) == 0
    finally:
        await blocker.close()
        await db.dispose()


@pytest.mark.usefixtures("postgresql_only")
async def test_after_a_restart_only_the_first_change_fails(
    runtime: Runtime, database_url: str
) -> None:
    user = await make_user(runtime, credits_granted=5)
    db = Database(database_url, pool_size=4)  # three in SQLAlchemy's pool (two lent apart)
    try:

        async def hold_one() -> None:
            async with db.read() as session:
                await prepared.execute(
                    session, _LOCK_BY_ID, {"ref": user.id, "idempotency_key": None}
                )
                await asyncio.sleep(0.2)
                await session.rollback()

        await asyncio.gather(*(hold_one() for _ in range(3)))  # all three opened and pooled
        assert await kill_server_sessions(database_url) >= 3

        outcomes: list[object] = []
        for n in range(3):
            try:
                await set_balance(db, user.id, 10 + n, commit=True)
                outcomes.append("ok")
            except (DBAPIError, DatabaseUnavailable) as exc:
                outcomes.append(type(exc).__name__)
        # The first one finds its connection dead; it invalidates the pool's others with it,
        # as SQLAlchemy's own handler does, so the next ones connect afresh.
        assert outcomes[1:] == ["ok", "ok"], outcomes
        assert await balance(database_url, user.id) == 12
    finally:
        await db.dispose()

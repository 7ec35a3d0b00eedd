"""Changes are notified only for watched users (migration 0008): over real uvicorn processes."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession
from websockets.asyncio.client import ClientConnection

from gateway.listener import APPLICATION_NAME
from gateway.live.notify import CHANGES_CHANNEL
from gateway.runtime import Runtime
from resolvers.ledger import credits
from resolvers.users import UserRef
from tests.conftest import asyncpg_dsn
from tests.factories import SUPPORT
from tests.gateway.gateway_process import RunningGateway
from tests.gateway.live_client import CREDITS, connected, next_data, nothing_within, subscribe
from tests.gateway.test_live import PUSHED_WITHIN_SECONDS, grant, make_user, start
from tests.schema.conftest import user_token

Rows = set[tuple[int, int]]


@pytest.fixture
async def admin(database_url: str, backend: str) -> AsyncIterator[asyncpg.Connection]:
    if backend != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite's processes poll")
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    yield connection
    await connection.close()


async def watch_rows(admin: asyncpg.Connection) -> Rows:
    rows = await admin.fetch("SELECT user_id, listener_pid FROM live_watches")
    return {(row["user_id"], row["listener_pid"]) for row in rows}


async def listener_pids(admin: asyncpg.Connection) -> set[int]:
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
        "AND datname = current_database()",
        APPLICATION_NAME,
    )
    return {row["pid"] for row in rows}


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def heard_on(admin_dsn: str) -> tuple[asyncpg.Connection, asyncio.Queue[str]]:
    """A LISTEN of our own on the changes channel: what the triggers send, as it arrives."""
    heard: asyncio.Queue[str] = asyncio.Queue()
    connection = await asyncpg.connect(admin_dsn)
    await connection.add_listener(CHANGES_CHANNEL, lambda *args: heard.put_nowait(args[3]))
    return connection, heard


async def test_a_write_nobody_watches_sends_no_notification_and_a_watched_one_does(
    database_url: str, admin: asyncpg.Connection, tmp_path: Path
) -> None:
    with start(database_url, tmp_path, "a") as a:
        key = a.create_key("support", "live-support")
        user_id, email = make_user(a)
        listening, heard = await heard_on(asyncpg_dsn(database_url))
        try:
            await asyncio.to_thread(grant, a, key, email, 5)
            await asyncio.sleep(0.5)
            assert heard.empty(), "a write nobody watches was notified"
            assert await watch_rows(admin) == set()

            socket = await connected(a.base, user_token(user_id))
            await subscribe(socket, "1", CREDITS)
            assert (await next_data(socket, "1"))["creditsChanged"]["available"] == 55
            # Registered under the process's LISTEN session, before the first read was sent.
            (pid,) = await listener_pids(admin)
            assert await watch_rows(admin) == {(user_id, pid)}

            event = await asyncio.to_thread(grant, a, key, email, 6)
            assert await asyncio.wait_for(heard.get(), PUSHED_WITHIN_SECONDS) == str(user_id)
            pushed = (await next_data(socket, "1"))["creditsChanged"]
            assert (pushed["available"], pushed["asOf"]) == (61, event["id"])

            # Past the gateway (the CLI, a cron job) the triggers notify just the same.
            spent = await asyncio.to_thread(
                a.cli, "adjust", "--user", email, "--consume-credits", "1", "--reason", "cli"
            )
            assert spent.returncode == 0, spent.stderr
            assert await asyncio.wait_for(heard.get(), PUSHED_WITHIN_SECONDS) == str(user_id)
            assert (await next_data(socket, "1"))["creditsChanged"]["available"] == 60
            await socket.close()
        finally:
            await listening.close()


async def test_a_write_in_flight_when_a_subscription_starts_reaches_it(
    database_url: str, admin: asyncpg.Connection, runtime: Runtime, tmp_path: Path
) -> None:
    # The writer's trigger runs before the watch row exists (no NOTIFY) and it commits only
    # after the subscription registered: the registration must wait for it, so that the
    # subscriber's first read sees the grant.
    with start(database_url, tmp_path, "a") as a:
        user_id, _ = make_user(a)
        granted_and_waiting = asyncio.Event()
        commit = asyncio.Event()

        async def grant_then_wait(session: AsyncSession) -> object:
            result = await credits.grant_ai_credits(
                session,
                user=UserRef(user_id=user_id),
                amount=7,
                reason="in flight",
                actor=SUPPORT,
                now=runtime.clock(),
                catalog=runtime.catalog,
            )
            granted_and_waiting.set()
            await commit.wait()
            return result

        writer = asyncio.create_task(runtime.db.write(grant_then_wait))
        await granted_and_waiting.wait()
        socket = await connected(a.base, user_token(user_id))
        await subscribe(socket, "1", CREDITS)
        # The registration waits for the writer's lock on the user: no first read yet.
        assert await nothing_within(socket, 0.5)
        commit.set()
        granted = await writer
        assert isinstance(granted, credits.CreditChanged), granted

        seen = (await next_data(socket, "1"))["creditsChanged"]
        if seen["available"] != 57:  # the commit's notification, at most a second later
            seen = (await next_data(socket, "1", within=1.0))["creditsChanged"]
        assert (seen["available"], seen["asOf"]) == (57, str(granted.event.id))
        await socket.close()


async def test_the_last_watcher_leaving_withdraws_the_user(
    database_url: str, admin: asyncpg.Connection, tmp_path: Path
) -> None:
    with start(database_url, tmp_path, "a") as a:
        user_id, _ = make_user(a)
        first = await connected(a.base, user_token(user_id))
        second = await connected(a.base, user_token(user_id))
        for socket in (first, second):
            await subscribe(socket, "1", CREDITS)
            await next_data(socket, "1")
        (pid,) = await listener_pids(admin)
        assert await watch_rows(admin) == {(user_id, pid)}

        await first.close()
        await asyncio.sleep(0.5)
        assert await watch_rows(admin) == {(user_id, pid)}  # still watched by the second

        await second.close()

        async def withdrawn() -> bool:
            return await watch_rows(admin) == set()

        assert await eventually(withdrawn)


async def test_a_killed_listener_registers_again_and_gone_listeners_rows_are_deleted(
    database_url: str, admin: asyncpg.Connection, tmp_path: Path
) -> None:
    with start(database_url, tmp_path, "a") as a:
        key = a.create_key("support", "live-support")
        user_id, email = make_user(a)
        socket = await connected(a.base, user_token(user_id))
        await subscribe(socket, "1", CREDITS)
        assert (await next_data(socket, "1"))["creditsChanged"]["available"] == 50
        (old_pid,) = await listener_pids(admin)
        # A row of a process that died without cleaning up: no session has this pid.
        gone_pid = 4_000_000
        await admin.execute("INSERT INTO live_watches VALUES ($1, $2)", user_id, gone_pid)
        assert await watch_rows(admin) == {(user_id, old_pid), (user_id, gone_pid)}

        assert await admin.fetchval("SELECT pg_terminate_backend($1)", old_pid)
        event = await asyncio.to_thread(grant, a, key, email, 7)
        pushed = (await next_data(socket, "1", within=10))["creditsChanged"]
        assert (pushed["available"], pushed["asOf"]) == (57, event["id"])

        (new_pid,) = await listener_pids(admin)
        assert new_pid != old_pid
        assert await watch_rows(admin) == {(user_id, new_pid)}

        event = await asyncio.to_thread(grant, a, key, email, 3)
        committed = time.monotonic()
        pushed = (await next_data(socket, "1"))["creditsChanged"]
        assert time.monotonic() - committed <= PUSHED_WITHIN_SECONDS
        assert (pushed["available"], pushed["asOf"]) == (60, event["id"])
        await socket.close()


async def test_many_subscribers_coming_and_going_on_two_processes_while_grants_commit(
    database_url: str, admin: asyncpg.Connection, tmp_path: Path
) -> None:
    with (
        start(database_url, tmp_path, "a") as a,
        start(database_url, tmp_path, "b") as b,
    ):
        key = a.create_key("support", "live-support")
        users = [make_user(a) for _ in range(4)]
        rng = random.Random(8)
        # Every user on both processes, three times each: 24 subscriptions opened at once.
        plan = [(gateway, user) for gateway in (a, b) for user in users for _ in range(3)]
        rng.shuffle(plan)

        async def open_one(gateway: RunningGateway, user: tuple[int, str]) -> ClientConnection:
            socket = await connected(gateway.base, user_token(user[0]))
            await subscribe(socket, "1", CREDITS)
            await next_data(socket, "1")
            return socket

        async def grants() -> dict[int, int]:
            granted = {user_id: 50 for user_id, _ in users}
            for round_ in range(3):
                for user_id, email in users:
                    gateway = (a, b)[round_ % 2]
                    event = await asyncio.to_thread(grant, gateway, key, email, 1)
                    granted[user_id] = event["balanceAfter"]
            return granted

        opened, final = await asyncio.gather(
            asyncio.gather(*(open_one(g, u) for g, u in plan)), grants()
        )
        sockets = list(zip(plan, opened, strict=True))
        # Whenever each subscription started, it ends showing its user's balance.
        for (_, (user_id, _)), socket in sockets:
            while True:
                seen = (await next_data(socket, "1", within=2.0))["creditsChanged"]
                if seen["available"] == final[user_id]:
                    break
        pids = await listener_pids(admin)
        assert len(pids) == 2
        assert await watch_rows(admin) == {(u, pid) for u, _ in users for pid in pids}

        # The first two users' subscriptions all close, at once, on both processes.
        leaving = {user_id for user_id, _ in users[:2]}
        await asyncio.gather(*(socket.close() for (_, (u, _)), socket in sockets if u in leaving))
        staying = {(u, pid) for u, _ in users[2:] for pid in pids}

        async def only_staying() -> bool:
            return await watch_rows(admin) == staying

        assert await eventually(only_staying)
        for (_, (u, _)), socket in sockets:
            if u not in leaving:
                await socket.close()

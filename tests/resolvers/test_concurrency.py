"""Real concurrency: many tasks and several OS processes spending one balance at the same time.

The balance must never go below zero and an idempotency key must spend once, whatever the
interleaving: on PostgreSQL (several gateway processes) and on SQLite (one file, several
processes). The other processes run tests/resolvers/consume_worker.py.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from gateway.db import Database
from gateway.runtime import Runtime
from resolvers import users
from resolvers.errors import InsufficientCredits
from resolvers.ledger import credits
from resolvers.models import CreditEvent, CreditGrant, User
from resolvers.users import UserRef
from tests.conftest import unique_email
from tests.factories import make_user

ROOT = Path(__file__).resolve().parents[2]
USAGE = credits.Actor(name="ai-backend", source="usage", request_id="req-concurrency")


async def run_workers(runtime: Runtime, url: str, *worker_args: list[str]) -> list[dict[str, Any]]:
    """Start one worker process per argument list, release them together, collect their JSON."""
    now = runtime.clock().isoformat()
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.resolvers.consume_worker",
            url,
            *args,
            "--now",
            now,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for args in worker_args
    ]
    try:
        for process in processes:
            line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
            assert line == b"ready\n", line + await process.stderr.read()
        for process in processes:
            process.stdin.write(b"go\n")
            await process.stdin.drain()
        reports = []
        for process in processes:
            out, err = await asyncio.wait_for(process.communicate(), timeout=120)
            assert process.returncode == 0, err.decode()
            reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    for report in reports:
        assert report["errors"] == []
    return reports


async def ledger_totals(runtime: Runtime, user_id: int) -> tuple[int, int, int]:
    """(balance on the row, sum of grants' remaining, sum of ledger events)."""
    async with runtime.db.read() as session:
        balance = await session.scalar(select(User.credits_available).where(User.id == user_id))
        remaining = await session.scalar(
            select(func.coalesce(func.sum(CreditGrant.remaining), 0)).where(
                CreditGrant.user_id == user_id
            )
        )
        ledger = await session.scalar(
            select(func.coalesce(func.sum(CreditEvent.amount), 0)).where(
                CreditEvent.user_id == user_id
            )
        )
    return balance, remaining, ledger


async def consume(runtime: Runtime, user_id: int, amount: int, key: str | None = None):
    return await runtime.db.write(
        lambda s: credits.consume_credits(
            s,
            user=UserRef(user_id=user_id),
            amount=amount,
            reason="ai usage",
            actor=USAGE,
            now=runtime.clock(),
            catalog=runtime.catalog,
            idempotency_key=key,
        )
    )


@pytest.mark.slow
async def test_200_spends_of_a_balance_of_100_from_two_processes_spend_exactly_100(
    runtime: Runtime, database_url: str
) -> None:
    user = await make_user(runtime, credits_granted=100)
    spend = ["consume", "--user-id", str(user.id), "--tasks", "100"]
    reports = await run_workers(runtime, database_url, spend, spend)
    # The processes really did overlap: each started before the other had finished.
    assert max(r["started"] for r in reports) < min(r["finished"] for r in reports)

    assert sum(r["succeeded"] for r in reports) == 100
    assert sum(r["failures"].get(InsufficientCredits.code, 0) for r in reports) == 100
    assert all(set(r["failures"]) <= {InsufficientCredits.code} for r in reports)
    event_ids = [i for r in reports for i in r["event_ids"]]
    assert len(set(event_ids)) == 100
    assert await ledger_totals(runtime, user.id) == (0, 0, 0)
    async with runtime.db.read() as session:
        balances_after = (
            await session.scalars(
                select(CreditEvent.balance_after)
                .where(CreditEvent.user_id == user.id, CreditEvent.kind == "consume")
                .order_by(CreditEvent.id)
            )
        ).all()
    # Each spend saw the one before it: the balances count down 99, 98, ... 0 without a gap.
    assert balances_after == list(range(99, -1, -1))


@pytest.mark.slow
async def test_reserves_and_spends_from_two_processes_never_hold_more_than_the_balance(
    runtime: Runtime, database_url: str
) -> None:
    user = await make_user(runtime, credits_granted=100)
    reserve = ["reserve", "--user-id", str(user.id), "--tasks", "60", "--amount", "2"]
    spend = ["consume", "--user-id", str(user.id), "--tasks", "60"]
    reports = await run_workers(runtime, database_url, reserve, spend, reserve)
    assert max(r["started"] for r in reports) < min(r["finished"] for r in reports)

    held = 2 * (reports[0]["succeeded"] + reports[2]["succeeded"])
    spent = reports[1]["succeeded"]
    assert held + spent == 100
    assert all(set(r["failures"]) <= {InsufficientCredits.code} for r in reports)
    async with runtime.db.read() as session:
        row = await session.get(User, user.id)
        assert row is not None
        assert (row.credits_available, row.credits_held) == (0, held)
    # available + held == the ledger; the held credits are off the grants, on the holds.
    assert await ledger_totals(runtime, user.id) == (0, 0, held)


async def test_concurrent_spends_in_one_process_never_overspend(runtime: Runtime) -> None:
    user = await make_user(runtime, credits_granted=30)
    results = await asyncio.gather(*(consume(runtime, user.id, 2) for _ in range(25)))
    assert sum(isinstance(r, credits.CreditChanged) for r in results) == 15
    assert results.count(InsufficientCredits(available=0, requested=2)) == 10
    assert await ledger_totals(runtime, user.id) == (0, 0, 0)


@pytest.mark.slow
async def test_duplicate_key_spends_once_across_processes(
    runtime: Runtime, database_url: str
) -> None:
    user = await make_user(runtime, credits_granted=100)
    spend = ["consume", "--user-id", str(user.id), "--tasks", "10", "--amount", "5"]
    reports = await run_workers(
        runtime, database_url, [*spend, "--key", "job-42"], [*spend, "--key", "job-42"]
    )

    assert sum(r["succeeded"] for r in reports) == 20
    assert sum(r["replayed"] for r in reports) == 19
    assert len({i for r in reports for i in r["event_ids"]}) == 1
    async with runtime.db.read() as session:
        keyed = (
            await session.scalars(
                select(CreditEvent).where(CreditEvent.idempotency_key == "job-42")
            )
        ).all()
    assert [(e.kind, e.amount, e.balance_after) for e in keyed] == [("consume", -5, 95)]
    assert reports[0]["event_ids"][0] == keyed[0].id
    assert await ledger_totals(runtime, user.id) == (95, 95, 95)


async def test_duplicate_key_spends_once_under_concurrent_tasks(runtime: Runtime) -> None:
    user = await make_user(runtime, credits_granted=100)
    results = await asyncio.gather(*(consume(runtime, user.id, 5, key="job-7") for _ in range(20)))

    assert all(isinstance(r, credits.CreditChanged) for r in results), results
    assert len({r.event.id for r in results}) == 1
    assert sorted(r.replayed for r in results) == [False] + [True] * 19
    assert await ledger_totals(runtime, user.id) == (95, 95, 95)


async def test_duplicate_key_grants_once_under_concurrent_tasks(runtime: Runtime) -> None:
    user = await make_user(runtime)

    async def grant():
        return await runtime.db.write(
            lambda s: credits.grant_ai_credits(
                s,
                user=UserRef(user_id=user.id),
                amount=40,
                reason="refund goodwill",
                actor=USAGE,
                now=runtime.clock(),
                idempotency_key="ticket-991",
            )
        )

    results = await asyncio.gather(*(grant() for _ in range(20)))
    assert len({r.event.id for r in results}) == 1
    assert sum(r.replayed for r in results) == 19
    assert await ledger_totals(runtime, user.id) == (40, 40, 40)


async def test_concurrent_upserts_of_one_email_make_one_user(runtime: Runtime) -> None:
    email = unique_email("race")
    # The same address as the main app might send it, in several spellings at once.
    spellings = [email, email.upper(), f"  {email.title()} "]
    results = await asyncio.gather(
        *(
            runtime.db.write(
                lambda s, e=spellings[i % 3]: users.upsert_user(
                    s, email=e, catalog=runtime.catalog, now=runtime.clock()
                )
            )
            for i in range(20)
        )
    )
    assert all(isinstance(r, users.UserUpserted) for r in results), results
    assert len({r.user.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    async with runtime.db.read() as session:
        assert await users.count_users(session) == 1


@pytest.mark.slow
async def test_concurrent_upserts_from_two_processes_make_one_user(
    runtime: Runtime, database_url: str
) -> None:
    email = unique_email("race")
    upsert = ["upsert", "--email", email, "--tasks", "10"]
    reports = await run_workers(
        runtime, database_url, upsert, ["upsert", "--email", email.upper(), "--tasks", "10"]
    )

    assert sum(r["succeeded"] for r in reports) == 20
    assert sum(r["created"] for r in reports) == 1
    assert len({i for r in reports for i in r["user_ids"]}) == 1
    async with runtime.db.read() as session:
        assert await users.count_users(session) == 1


async def test_fresh_sqlite_file_opens_while_another_process_writes_to_it(tmp_path: Path) -> None:
    """Right after `db upgrade` the file is not in WAL mode yet; a worker must still start."""
    path = tmp_path / "fresh.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (x)")
    # Another process (a migration, or a second worker switching the file to WAL) writes.
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (1)")
    release = threading.Timer(0.3, other.execute, ["COMMIT"])
    release.start()
    db = Database(f"sqlite+aiosqlite:///{path}")
    try:
        async with db.engine.connect() as connection:
            journal = (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar()
            count = (await connection.exec_driver_sql("SELECT count(*) FROM t")).scalar()
    finally:
        release.join()
        other.close()
        await db.dispose()
    assert (journal, count) == ("wal", 1)

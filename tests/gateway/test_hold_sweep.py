"""The hold sweep: `entitlements holds sweep` and the server's loop record run-out holds once."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select

from gateway.runtime import Runtime
from gateway.sweeps import sweep_holds, sweep_periodically
from resolvers.ledger import holds
from resolvers.ledger.entries import Actor
from resolvers.models import CreditEvent, CreditHold, User
from resolvers.users import UserRef
from tests.factories import SUPPORT, make_user
from tests.gateway.test_cli import entitlements

SWEEPER = Actor(name="test-sweep", source="system", request_id="req-sweep")


async def hold(runtime: Runtime, user_id: int, amount: int, ttl_seconds: int) -> holds.Hold:
    result = await runtime.db.write(
        lambda s: holds.reserve_credits(
            s,
            user=UserRef(user_id=user_id),
            amount=amount,
            reason="a call that never settled",
            actor=SUPPORT,
            now=runtime.clock(),
            catalog=runtime.catalog,
            ttl_seconds=ttl_seconds,
        )
    )
    assert isinstance(result, holds.HoldChanged), result
    return result.hold


async def statuses(runtime: Runtime, user_id: int) -> list[str]:
    async with runtime.db.read() as session:
        return list(
            (
                await session.scalars(
                    select(CreditHold.status)
                    .where(CreditHold.user_id == user_id)
                    .order_by(CreditHold.id)
                )
            ).all()
        )


async def test_concurrent_sweeps_expire_each_run_out_hold_once(runtime: Runtime) -> None:
    user = await make_user(runtime, credits_granted=10)
    short = await hold(runtime, user.id, 4, ttl_seconds=60)
    await hold(runtime, user.id, 3, ttl_seconds=3600)
    runtime.clock.advance(seconds=61)
    reports = await asyncio.gather(
        *(sweep_holds(runtime.db, now=runtime.clock(), actor=SWEEPER) for _ in range(3))
    )
    assert sum(r.holds for r in reports) == 1
    assert await statuses(runtime, user.id) == ["expired", "active"]
    async with runtime.db.read() as session:
        row = await session.get(User, user.id)
        assert (row.credits_available, row.credits_held) == (7, 3)
        closed = await session.get(CreditHold, short.id)
        # It expired at its expiresAt, whenever the sweep came by.
        assert closed.closed_at == short.expires_at
        kinds = (
            await session.scalars(
                select(CreditEvent.kind)
                .where(CreditEvent.user_id == user.id)
                .order_by(CreditEvent.id)
            )
        ).all()
    assert kinds == ["grant", "hold", "hold", "hold_expire"]


async def test_the_servers_sweep_loops_record_a_run_out_hold_once_by_themselves(
    runtime: Runtime,
) -> None:
    # Two of the loops `entitlements serve` runs (one per process), on a short period: nothing
    # but the loops touches the hold once it has run out.
    user = await make_user(runtime, credits_granted=10)
    await hold(runtime, user.id, 4, ttl_seconds=60)
    loops = [
        asyncio.create_task(sweep_periodically(runtime.db, runtime.clock, every=0.05))
        for _ in range(2)
    ]
    try:
        await asyncio.sleep(0.3)
        assert await statuses(runtime, user.id) == ["active"]  # not run out yet: left alone
        runtime.clock.advance(seconds=61)
        for _ in range(100):
            if await statuses(runtime, user.id) == ["expired"]:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # more rounds of both loops: still written once
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
    assert await statuses(runtime, user.id) == ["expired"]
    async with runtime.db.read() as session:
        kinds = (
            await session.scalars(
                select(CreditEvent.kind)
                .where(CreditEvent.user_id == user.id)
                .order_by(CreditEvent.id)
            )
        ).all()
        row = await session.get(User, user.id)
    assert kinds == ["grant", "hold", "hold_expire"]
    assert (row.credits_available, row.credits_held) == (10, 0)


async def test_holds_sweep_command_and_user_show_at_a_past_time(
    runtime: Runtime, database_url: str
) -> None:
    user = await make_user(runtime, credits_granted=10)
    start = runtime.clock()
    await hold(runtime, user.id, 6, ttl_seconds=60)
    runtime.clock.advance(seconds=120)

    swept = await entitlements(database_url, "holds", "sweep", "--json")
    assert swept.returncode == 0, swept.stderr
    assert (swept.json()["holds"], swept.json()["users"]) == (1, 1)
    assert [c["action"] for c in swept.change_lines()] == ["hold_expired"]
    again = await entitlements(database_url, "holds", "sweep", "--json")
    assert again.json()["holds"] == 0
    assert await statuses(runtime, user.id) == ["expired"]

    at = (start + timedelta(seconds=30)).isoformat()
    shown = await entitlements(database_url, "user", "show", user.email, "--at", at, "--json")
    assert shown.returncode == 0, shown.stderr
    document = shown.json()
    assert (document["available"], document["held"]) == (4, 6)
    assert [h["amount"] for h in document["holds"]] == [6]
    later = (start + timedelta(seconds=90)).isoformat()
    shown = await entitlements(database_url, "user", "show", user.email, "--at", later, "--json")
    assert (shown.json()["available"], shown.json()["held"]) == (10, 0)
    future = (runtime.clock() + timedelta(hours=1)).isoformat()
    refused = await entitlements(database_url, "user", "show", user.email, "--at", future)
    assert refused.returncode != 0 and "future" in refused.stderr

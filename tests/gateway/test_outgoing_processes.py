"""Outgoing webhooks from real gateways (uvicorn): killed mid-dispatch, and two at once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.runtime import Runtime
from gateway.settings import Settings
from tests.factories import make_user
from tests.fakes.webhook_receiver import SECRET, Receiver, run_receiver
from tests.gateway.gateway_process import BIN, free_port
from tests.gateway.test_outgoing_delivery import (
    assert_received_once_in_order,
    flip_tiers,
    outbox,
    pending,
)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with run_receiver() as running:
        yield running


@pytest.fixture
def settings(database_url: str, receiver: Receiver) -> Settings:
    return Settings(
        database_url=database_url,
        outgoing_webhook_urls=(receiver.url,),
        outgoing_webhook_secret=SECRET,
    )


@contextmanager
def gateway(database_url: str, receiver: Receiver, log: Path) -> Iterator[subprocess.Popen[Any]]:
    """`entitlements serve` (one uvicorn process) sending to the receiver, once it is ready."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        "OUTGOING_WEBHOOK_URLS": receiver.url,
        "OUTGOING_WEBHOOK_SECRET": SECRET,
    }
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "entitlements"), "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


async def wait_for(condition: Any, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def seed_events(runtime: Runtime, users: int, per_user: int) -> dict[int, list[str]]:
    for _ in range(users):
        user = await make_user(runtime, calendar_allowances=False)
        await flip_tiers(runtime, user.id, per_user)
    return await outbox(runtime.db)


async def test_sigkill_mid_dispatch_loses_nothing(
    runtime: Runtime, receiver: Receiver, database_url: str, tmp_path: Path, clock: Any
) -> None:
    expected = await seed_events(runtime, users=3, per_user=6)
    receiver.delay = 0.3  # requests in flight when the kill lands

    async def some_arrived() -> bool:
        return len(receiver.received) >= 4

    with gateway(database_url, receiver, tmp_path / "first.log") as first:
        await wait_for(some_arrived)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    assert await pending(runtime.db) > 0  # killed with work left

    receiver.delay = 0.0
    # The next process starts a minute on: on SQLite the killed one's lease has run out.
    clock.advance(seconds=60)

    async def all_delivered() -> bool:
        return await pending(runtime.db) == 0

    with gateway(database_url, receiver, tmp_path / "second.log"):
        await wait_for(all_delivered)
    assert_received_once_in_order(receiver, expected)


async def test_two_gateways_dispatching_deliver_each_event_once_in_order(
    runtime: Runtime, receiver: Receiver, database_url: str, tmp_path: Path
) -> None:
    expected = await seed_events(runtime, users=5, per_user=6)
    receiver.delay = 0.02

    async def all_delivered() -> bool:
        return await pending(runtime.db) == 0

    with (
        gateway(database_url, receiver, tmp_path / "a.log"),
        gateway(database_url, receiver, tmp_path / "b.log"),
    ):
        await wait_for(all_delivered)
        await asyncio.sleep(1.5)  # a second pass of either finds nothing to send again
    assert len(receiver.received) == 30  # no event twice
    assert_received_once_in_order(receiver, expected)

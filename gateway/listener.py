"""This process's one PostgreSQL LISTEN connection, shared by every channel, kept up for good.

Key revocations (gateway.revocations) and committed changes (gateway.live) each listen on a
channel of their own over the same connection: a process holds one session for all pushes, not
one per kind. After the connection comes back (a database restart, a killed backend) every
channel's `on_connect` runs, since whatever was sent while nobody listened is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.db import Database
from gateway.logs import log_fields

log = logging.getLogger("gateway.listener")

APPLICATION_NAME = "entitlements-listener"
# A silent network drop is only noticed when something is sent; a ping this often finds it.
KEEPALIVE_SECONDS = 15.0
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
FIRST_CONNECT_SECONDS = 5.0


@dataclass(frozen=True)
class Channel:
    name: str
    heard: Callable[[str], None]  # called with the payload, on the event loop
    on_connect: Callable[[], None] | None = None  # each time listening (re)starts


class Listener:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.listening = asyncio.Event()
        self.connects = 0
        # The server pid of the LISTEN session while it is up: live_watches names the listener
        # by it (gateway.live.watches). None while not listening.
        self.backend_pid: int | None = None
        self._channels: dict[str, Channel] = {}
        self._task: asyncio.Task[None] | None = None

    def listen(
        self,
        name: str,
        heard: Callable[[str], None],
        *,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        """Register a channel; before `start` only."""
        assert self._task is None, "channels are registered before the listener starts"
        self._channels[name] = Channel(name, heard, on_connect)

    async def start(self) -> None:
        """Listen in the background; wait a little for the first connection, never fail."""
        self._task = asyncio.create_task(self._run(), name="postgresql-listener")
        try:
            await asyncio.wait_for(self.listening.wait(), FIRST_CONNECT_SECONDS)
        except TimeoutError:
            log_fields(log, logging.WARNING, event="listener_waiting")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._listen_once()
                failures = 0
            except Exception as exc:  # a background task must outlive any fault and retry
                log_fields(
                    log,
                    logging.WARNING,
                    event="listener_down",
                    error=type(exc).__name__,
                    attempt=failures + 1,
                )
                failures += 1
            finally:
                self.listening.clear()
                self.backend_pid = None
            await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])

    async def _listen_once(self) -> None:
        """Hold one connection until it breaks."""
        connection = await self.db.connect_outside_pool(
            server_settings={"application_name": APPLICATION_NAME}
        )
        try:
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _: lost.set())
            for channel in self._channels.values():
                await connection.add_listener(channel.name, self._dispatch)
            self.connects += 1
            self.backend_pid = connection.get_server_pid()
            self.listening.set()
            log_fields(log, logging.INFO, event="listener_up", channels=sorted(self._channels))
            for channel in self._channels.values():
                if channel.on_connect is not None:
                    channel.on_connect()
            while not connection.is_closed():
                try:
                    await asyncio.wait_for(lost.wait(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    await connection.execute("SELECT 1")
            log_fields(log, logging.WARNING, event="listener_lost")
        finally:
            connection.terminate()

    def _dispatch(self, _connection: Any, _pid: int, name: str, payload: str) -> None:
        channel = self._channels.get(name)
        if channel is not None:
            channel.heard(payload)

"""Key revocations pushed to this process: one PostgreSQL LISTEN connection, kept up for good.

`resolvers.keys.revoke_api_key` sends NOTIFY in the revoking transaction (the CLI, or any
other process); each gateway process drops the key from its cache when it hears it, so a
revoked key stops working everywhere within a second instead of the cache's 10 s. While the
connection is down, the cache's TTL still bounds how long a revoked key keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from gateway.auth import Authenticator
from gateway.db import Database
from gateway.logs import log_fields
from resolvers.keys import KEY_REVOKED_CHANNEL

log = logging.getLogger("gateway.revocations")

APPLICATION_NAME = "entitlements-revocations"
# A silent network drop is only noticed when something is sent; a ping this often finds it.
KEEPALIVE_SECONDS = 15.0
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
FIRST_CONNECT_SECONDS = 5.0


class RevocationListener:
    def __init__(self, db: Database, authenticator: Authenticator) -> None:
        self.db = db
        self.authenticator = authenticator
        self.listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen in the background; wait a little for the first connection, never fail."""
        self._task = asyncio.create_task(self._run(), name="key-revocation-listener")
        try:
            await asyncio.wait_for(self.listening.wait(), FIRST_CONNECT_SECONDS)
        except TimeoutError:
            log_fields(log, logging.WARNING, event="revocation_listener_waiting")

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
                    event="revocation_listener_down",
                    error=type(exc).__name__,
                    attempt=failures + 1,
                )
                failures += 1
            finally:
                self.listening.clear()
            await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])

    async def _listen_once(self) -> None:
        """Hold one connection until it breaks."""
        connection = await self.db.connect_outside_pool(
            server_settings={"application_name": APPLICATION_NAME}
        )
        try:
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _: lost.set())
            await connection.add_listener(KEY_REVOKED_CHANNEL, self._heard)
            # Whatever was revoked while nobody listened is unknown: read every key afresh.
            self.authenticator.forget_api_keys()
            self.listening.set()
            log_fields(log, logging.INFO, event="revocation_listener_up")
            while not connection.is_closed():
                try:
                    await asyncio.wait_for(lost.wait(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    await connection.execute("SELECT 1")
            log_fields(log, logging.WARNING, event="revocation_listener_lost")
        finally:
            connection.terminate()

    def _heard(self, _connection: Any, _pid: int, _channel: str, key_hash: str) -> None:
        self.authenticator.forget_api_key(key_hash)
        log_fields(log, logging.INFO, event="api_key_revoked_heard")

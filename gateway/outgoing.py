"""The dispatcher of outgoing webhooks: signed POSTs (Standard Webhooks), one process at a time.

Each pass takes the dispatch lock (a PostgreSQL advisory lock, or the SQLite lease row), then
sends the head of every user's queue per endpoint, records each answer as soon as it comes, and
goes on with the next heads until nothing is due. An event is marked delivered only after its
endpoint answered 2xx: a process killed mid-send leaves it pending, and the next pass (of any
process) sends it again. Delivery is therefore at least once; receivers dedupe by webhook-id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import text
from standardwebhooks.webhooks import Webhook

from gateway.db import Database
from resolvers.outbox import deliveries, lease
from resolvers.outbox.deliveries import DeliveryStatus, DueDelivery

log = logging.getLogger("gateway.outgoing")
SEND_TIMEOUT_SECONDS = 10.0
PARALLEL_SENDS = 16
BATCH = 100
MAX_ROUNDS = 1_000  # heads per queue sent in one pass, bounding a pass's length
# PostgreSQL advisory lock id of the dispatcher; other processes skip while one holds it.
_DISPATCH_LOCK = 0x4F757462  # "Outb"
# The SQLite lease outlives a pass by this much; a killed holder is replaced after it.
LEASE_TTL = timedelta(seconds=30)


@dataclass(frozen=True)
class DispatchReport:
    delivered: int
    failed: int  # attempts that did not get a 2xx (retried later, or given up)
    skipped: bool  # another process holds the dispatch lock


class Dispatcher:
    """Sends due deliveries; one per process, reused across passes (its HTTP pool too)."""

    def __init__(self, db: Database, *, secret: str, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock
        self.webhook = Webhook(secret)
        self.holder = f"dispatcher-{uuid.uuid4().hex}"
        self.http = httpx.AsyncClient(timeout=SEND_TIMEOUT_SECONDS, follow_redirects=False)

    async def close(self) -> None:
        await self.http.aclose()

    async def dispatch(self) -> DispatchReport:
        """One pass: everything due now, unless another process is dispatching."""
        # A read first: an idle pass then takes no lock (on SQLite, no write transaction).
        async with self.db.read() as session:
            if not await deliveries.due_deliveries(session, now=self.clock(), limit=1):
                return DispatchReport(delivered=0, failed=0, skipped=False)
        async with self._dispatch_lock() as is_mine:
            if not is_mine:
                return DispatchReport(delivered=0, failed=0, skipped=True)
            delivered = failed = 0
            limit = asyncio.Semaphore(PARALLEL_SENDS)
            for _ in range(MAX_ROUNDS):
                async with self.db.read() as session:
                    due = await deliveries.due_deliveries(session, now=self.clock(), limit=BATCH)
                if not due:
                    break
                outcomes = await asyncio.gather(*(self._send(d, limit) for d in due))
                delivered += sum(o is DeliveryStatus.DELIVERED for o in outcomes)
                failed += sum(o is not DeliveryStatus.DELIVERED for o in outcomes)
                await self._renew_lease()
            return DispatchReport(delivered=delivered, failed=failed, skipped=False)

    async def _send(self, delivery: DueDelivery, limit: asyncio.Semaphore) -> DeliveryStatus:
        async with limit:
            sent_at = self.clock()
            body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False)
            headers = {
                "content-type": "application/json",
                "user-agent": "entitlements-gateway",
                "webhook-id": delivery.message_id,
                "webhook-timestamp": str(int(sent_at.timestamp())),
                "webhook-signature": self.webhook.sign(delivery.message_id, sent_at, body),
            }
            status_code: int | None = None
            error: str | None = None
            try:
                response = await self.http.post(
                    delivery.endpoint, content=body.encode(), headers=headers
                )
                status_code = response.status_code
                if not 200 <= status_code < 300:
                    error = f"HTTP {status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
        outcome = await self.db.write(
            lambda session: deliveries.record_attempt(
                session, delivery, now=self.clock(), status_code=status_code, error=error
            )
        )
        if error is not None:
            log.info(
                "outgoing webhook %s to %s failed: %s",
                delivery.message_id,
                delivery.endpoint,
                error,
            )
        return outcome

    @asynccontextmanager
    async def _dispatch_lock(self) -> AsyncIterator[bool]:
        if self.db.is_sqlite:
            mine = await self.db.write(
                lambda s: lease.take_lease(s, holder=self.holder, now=self.clock(), ttl=LEASE_TTL)
            )
            try:
                yield mine
            finally:
                if mine:
                    await self.db.write(lambda s: lease.drop_lease(s, holder=self.holder))
            return
        async with self.db.engine.connect() as conn:
            taken = bool(
                (
                    await conn.execute(
                        text("SELECT pg_try_advisory_lock(:k)"), {"k": _DISPATCH_LOCK}
                    )
                ).scalar_one()
            )
            await conn.commit()
            try:
                yield taken
            finally:
                if taken:
                    # A session lock outlives the transaction: the pooled connection must let go.
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _DISPATCH_LOCK})
                    await conn.commit()

    async def _renew_lease(self) -> None:
        if self.db.is_sqlite:
            await self.db.write(
                lambda s: lease.take_lease(s, holder=self.holder, now=self.clock(), ttl=LEASE_TTL)
            )

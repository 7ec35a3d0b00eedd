"""This process's subscribers by user, woken when a change of their user commits anywhere.

A subscription waits on its `Watch`; when woken it reads the state afresh and sends it if the
ledger position moved (schema.subscription). Waking is idempotent: a change that commits while
a subscriber reads wakes it again, so nothing committed is missed, and one read may cover
several commits. Where the wake-ups come from:

- PostgreSQL: the NOTIFY of each changing transaction (gateway.live.notify), heard on the
  process's one listening connection; when that connection comes back, every subscriber
  re-reads, since changes committed while nobody listened were not heard.
- SQLite: the unit of work of this process, at once; other processes' commits by a poll of
  the change tables' newest ids, only while someone here is subscribed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from gateway.db import Database
from gateway.listener import Listener
from gateway.live.notify import CHANGES_CHANNEL, parse_payload
from gateway.logs import log_fields
from resolvers.ledger.positions import change_marks, users_changed_since
from schema.context import AuthError

log = logging.getLogger("gateway.live")

SUBSCRIPTION_LIMIT = "SUBSCRIPTION_LIMIT"


class Watch:
    """One subscription's wake-ups."""

    __slots__ = ("_woken", "user_id")

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self._woken = asyncio.Event()

    def wake(self) -> None:
        self._woken.set()

    async def wait(self) -> None:
        await self._woken.wait()
        self._woken.clear()


class LiveFeed:
    def __init__(self, db: Database, *, max_subscribers: int, poll_seconds: float) -> None:
        self.db = db
        self.max_subscribers = max_subscribers
        self.poll_seconds = poll_seconds
        self.subscribers = 0
        self._by_user: dict[int, set[Watch]] = {}
        self._poller: asyncio.Task[None] | None = None

    def admit(self) -> None:
        """Refuse a new subscriber past the process's limit (before its stream starts)."""
        if self.subscribers >= self.max_subscribers:
            raise AuthError(
                f"This server holds its limit of {self.max_subscribers} subscriptions: "
                "retry later or on another server",
                SUBSCRIPTION_LIMIT,
            )

    @contextlib.asynccontextmanager
    async def watch(self, user_id: int) -> AsyncIterator[Watch]:
        """Wake-ups for `user_id` while inside; refused past the process's subscriber limit."""
        self.admit()
        watch = Watch(user_id)
        self._by_user.setdefault(user_id, set()).add(watch)
        self.subscribers += 1
        try:
            yield watch
        finally:
            self.subscribers -= 1
            watchers = self._by_user[user_id]
            watchers.discard(watch)
            if not watchers:
                del self._by_user[user_id]

    def wake(self, user_ids: list[int] | set[int]) -> None:
        for user_id in user_ids:
            for watch in self._by_user.get(user_id, ()):
                watch.wake()

    def wake_all(self) -> None:
        for watchers in self._by_user.values():
            for watch in watchers:
                watch.wake()

    def attach(self, listener: Listener) -> None:
        """PostgreSQL: wake subscribers on each NOTIFY, and all of them after a reconnect."""
        listener.listen(CHANGES_CHANNEL, self._heard, on_connect=self.wake_all)

    def _heard(self, payload: str) -> None:
        self.wake(parse_payload(payload))

    async def start(self) -> None:
        """SQLite: push this process's commits at once, and poll for other processes'."""
        if self.db.is_sqlite:
            self.db.on_commit = self.wake
            self._poller = asyncio.create_task(self._poll_forever(), name="live-feed-poll")

    async def stop(self) -> None:
        self.db.on_commit = None
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def _poll_forever(self) -> None:
        marks: tuple[int, ...] | None = None
        failing = False
        while True:
            await asyncio.sleep(self.poll_seconds)
            if not self._by_user:
                marks = None  # nobody to tell; a new subscriber reads the state itself
                continue
            try:
                async with self.db.connect() as conn:
                    latest = await change_marks(conn)
                    changed = (
                        await users_changed_since(conn, marks)
                        if marks is not None and latest != marks
                        else set()
                    )
            except Exception as exc:  # the poll must outlive a database fault
                if not failing:
                    failure = type(exc).__name__
                    log_fields(log, logging.WARNING, event="live_poll_failed", error=failure)
                failing = True
                continue
            if failing:
                failing = False
                self.wake_all()  # what changed while the poll failed is unknown
            if marks is None:
                # A commit between a new subscriber's first read and this baseline is in it.
                self.wake_all()
            marks = latest
            self.wake(changed)

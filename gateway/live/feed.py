"""This process's subscribers by user, woken when a change of their user commits anywhere.

A subscription waits on its `Watch`; when woken it reads the state afresh and sends it if the
ledger position moved (schema.subscription). Waking is idempotent: a change that commits while
a subscriber reads wakes it again, so nothing committed is missed, and one read may cover
several commits. Where the wake-ups come from:

- PostgreSQL: the NOTIFY of each changing transaction (gateway.live.notify), heard on the
  process's one listening connection. The triggers notify only for watched users, so the first
  watcher of a user here registers it (gateway.live.watches) before its first read, and the
  last one to leave withdraws it. When the connection comes back (a new backend pid), every
  watched user is registered again under it and then every subscriber re-reads, since changes
  committed while nobody listened were not heard.
- SQLite: the unit of work of this process, at once; other processes' commits by a poll of
  the change tables' newest ids, only while someone here is subscribed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from gateway.db import Database
from gateway.listener import Listener
from gateway.live import watches
from gateway.live.notify import CHANGES_CHANNEL, parse_payload
from gateway.logs import log_fields
from resolvers.ledger.positions import change_marks, users_changed_since
from schema.context import AuthError

log = logging.getLogger("gateway.live")

SUBSCRIPTION_LIMIT = "SUBSCRIPTION_LIMIT"
STOP_SECONDS = 2.0


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
        self._listener: Listener | None = None
        self._listener_pid: int | None = None  # the pid the last (re)connect registered under
        # Per user, the last registration or withdrawal scheduled: each runs after the one
        # before, so a withdrawal never deletes the row of a watcher that came back meanwhile.
        self._latest: dict[int, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()

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
        watchers = self._by_user.setdefault(user_id, set())
        if not watchers and self._listener is not None:
            self._schedule(user_id, self._register)
        watchers.add(watch)
        self.subscribers += 1
        try:
            # Registered and committed before the first read, whichever watcher registered it;
            # shielded: the other watchers of the user wait for the same registration.
            if (pending := self._latest.get(user_id)) is not None:
                await asyncio.shield(pending)
            yield watch
        finally:
            self.subscribers -= 1
            watchers.discard(watch)
            if not watchers:
                del self._by_user[user_id]
                if self._listener is not None:
                    self._schedule(user_id, self._withdraw)

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
        self._listener = listener
        listener.listen(CHANGES_CHANNEL, self._heard, on_connect=self._listening_again)

    def _schedule(self, user_id: int, step: Callable[[int], Awaitable[None]]) -> None:
        previous = self._latest.get(user_id)

        async def after_previous() -> None:
            if previous is not None:
                await asyncio.wait([previous])  # its failure is its own, logged there
            await step(user_id)

        task = self._spawn(after_previous())
        self._latest[user_id] = task
        task.add_done_callback(
            lambda done: self._latest.pop(user_id) if self._latest.get(user_id) is done else None
        )

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._background.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._background.discard)
        return task

    async def _register(self, user_id: int) -> None:
        pid = self._pid()
        # Not listening: the next connect registers every watched user, then wakes them all.
        if pid is None or user_id not in self._by_user:
            return
        try:
            await watches.register(self.db, pid, [user_id])
        except Exception as exc:  # the subscriber still reads; the next reconnect registers
            log_fields(log, logging.WARNING, event="live_watch_failed", error=type(exc).__name__)

    async def _withdraw(self, user_id: int) -> None:
        pid = self._pid()
        # Watched again meanwhile, or not listening: a reconnect deletes the old pid's rows.
        if pid is None or user_id in self._by_user:
            return
        try:
            await watches.unregister(self.db, pid, [user_id])
        except Exception as exc:  # a row left behind costs notifications, not correctness
            log_fields(log, logging.WARNING, event="live_unwatch_failed", error=type(exc).__name__)

    def _pid(self) -> int | None:
        return self._listener.backend_pid if self._listener is not None else None

    def _listening_again(self) -> None:
        # The listener calls this synchronously; the registration needs the database, and the
        # subscribers must re-read only after it committed (or a change could go unheard).
        previous, self._listener_pid = self._listener_pid, self._pid()
        if self._listener_pid is not None:
            self._spawn(self._register_all(previous, self._listener_pid))

    async def _register_all(self, previous_pid: int | None, pid: int) -> None:
        watched = sorted(self._by_user)
        try:
            await watches.forget_gone_listeners(self.db, previous_pid)
            await watches.register(self.db, pid, watched)
        except Exception as exc:  # the listener reconnects (and comes back here) if it is down
            log_fields(
                log, logging.WARNING, event="live_reregister_failed", error=type(exc).__name__
            )
        for user_id in watched:
            if user_id not in self._by_user:  # left while registering: its row goes too
                self._schedule(user_id, self._withdraw)
        self.wake_all()

    def _heard(self, payload: str) -> None:
        self.wake(parse_payload(payload))

    async def start(self) -> None:
        """SQLite: push this process's commits at once, and poll for other processes'."""
        if self.db.is_sqlite:
            self.db.on_commit = self.wake
            self._poller = asyncio.create_task(self._poll_forever(), name="live-feed-poll")

    async def stop(self) -> None:
        self.db.on_commit = None
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if (pid := self._pid()) is not None:
            # Best effort: rows left behind are deleted by the next process that connects.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watches.forget_listener(self.db, pid), STOP_SECONDS)
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

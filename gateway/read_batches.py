"""By-key reads of concurrent requests joined into one statement: the viewer read under load.

A page view's read is one statement by key (the viewer's row, their grants). Under load, tens
of them arrive together, and each paid for itself: a connection lent and given back, a Bind
and Execute on the socket, a reply to read, and on the server a statement's planning and
execution. Joined, requests that ask the same read in the same turn of the event loop share
one statement for all their keys (`= ANY($1)`, which every such read already takes), and each
is handed the rows of its own keys, in the statement's order.

What a request sees is unchanged. A batch is sent only after every request in it arrived, so
it reads a snapshot at least as new as each of them would have read alone (read-your-writes
holds). A read is joinable only when its rows for a set of keys are the union of its rows for
each key (`Joinable`): a row belongs to exactly one key, by its `key` field, and a per-key
limit (the newest N per user) ranks within the key. A request alone in its turn is a batch of
one: the same single statement as before, a turn of the loop later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Protocol

from gateway.driver_pool import LentConnection


class Joinable(Protocol):
    """A read by keys whose rows each belong to the one key in their `key` field."""

    key: str

    async def fetch(
        self, connection: Any, driver: Any, keys: Sequence[Any], **named: Any
    ) -> list[Any]: ...


class _Batch:
    __slots__ = ("keys", "loop", "named", "read", "waiters")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, read: Joinable, named: dict[str, Any]
    ) -> None:
        self.loop = loop
        self.read = read
        self.named = named
        self.keys: dict[Any, None] = {}  # every waiter's keys, in order of arrival, once
        self.waiters: list[tuple[Sequence[Any], asyncio.Future[list[Any]]]] = []


class ReadBatches:
    """Joins the same read's keys across the requests of one turn of the loop."""

    def __init__(
        self,
        lend: Callable[[], Awaitable[LentConnection]],
        *,
        joined: Callable[[], None],
        answered: Callable[[int], None],
    ) -> None:
        self._lend = lend
        # Called in each request that joined another's statement: the engine's statement
        # event fired in the request that opened the batch (its task runs in that context).
        self._joined = joined
        # Called with how many requests each statement answered.
        self._answered = answered
        # Batches still open to more keys, by read and named parameters.
        self._open: dict[tuple[int, Hashable], _Batch] = {}
        self._running: set[asyncio.Task[None]] = set()

    async def fetch(self, read: Joinable, keys: Sequence[Any], named: dict[str, Any]) -> list[Any]:
        """The rows of `read` for `keys`, as `read.fetch` would give them alone."""
        loop = asyncio.get_running_loop()
        identity = (id(read), tuple(named.items()) if named else ())
        batch = self._open.get(identity)
        # A batch of another loop is one whose loop stopped before it ran (tests' loops).
        opened = batch is None or batch.loop is not loop
        if opened:
            batch = self._open[identity] = _Batch(loop, read, named)
        assert batch is not None
        future: asyncio.Future[list[Any]] = loop.create_future()
        batch.waiters.append((keys, future))
        batch.keys.update(dict.fromkeys(keys))
        if opened:
            # Its first step runs in the next turn of the loop, after every request that is
            # ready in this one has asked (the opener's keys are in before it can start).
            task = loop.create_task(self._run(identity, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        rows = await future
        if not opened:
            self._joined()
        return rows

    async def _run(self, identity: tuple[int, Hashable], batch: _Batch) -> None:
        if self._open.get(identity) is batch:
            del self._open[identity]  # closed: later requests start the next batch
        try:
            lent = await self._lend()
            try:
                rows = await batch.read.fetch(
                    lent.events, lent.driver, list(batch.keys), **batch.named
                )
            except BaseException:
                # Failed or cancelled mid-statement: the connection's state is unknown.
                await lent.release(broken=True)
                raise
            await lent.release()
            self._answered(len(batch.waiters))
            _hand_out(batch, rows)
        except asyncio.CancelledError:
            # Only the process stopping cancels a batch: to its requests, as a lost database.
            _fail(batch, ConnectionError("the read was cut off"))
            raise
        except Exception as exc:  # the statement's, or a fault in handing out: none waits on
            _fail(batch, exc)

    async def close(self) -> None:
        """Waits for the batches under way (their requests are waiting for them)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


def _fail(batch: _Batch, exc: BaseException) -> None:
    for _, future in batch.waiters:
        if not future.done():
            future.set_exception(exc)


def _hand_out(batch: _Batch, rows: list[Any]) -> None:
    waiters = batch.waiters
    if len(waiters) == 1:
        _, future = waiters[0]
        if not future.done():
            future.set_result(rows)
        return
    key = batch.read.key
    # Each key's rows by position in the statement's answer.
    positions: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        found = positions.get(getattr(row, key))
        if found is None:
            positions[getattr(row, key)] = [i]
        else:
            found.append(i)
    for keys, future in waiters:
        if future.done():
            continue
        if len(keys) == 1:
            mine = positions.get(keys[0], ())
        else:
            # The statement's order, as a read of these keys alone would give them.
            mine = sorted(i for k in dict.fromkeys(keys) for i in positions.get(k, ()))
        future.set_result([rows[i] for i in mine])

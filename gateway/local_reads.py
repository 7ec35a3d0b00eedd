"""SQLite reads on plain `sqlite3` connections, run on the event loop itself, past aiosqlite.

Profiled under the viewer read on SQLite, aiosqlite's hop to its thread and back (a queue, a
future, call_soon_threadsafe) and the pool checkout through SQLAlchemy's greenlet cost more of
the process than the point read by key, which takes SQLite a few microseconds on a local file.
So compiled plans whose statements are reads by key (gateway.compiled) read on a connection of
this process's own, opened read-only (`mode=ro`: these reads can never write), synchronously.

Each request reads in one snapshot: a deferred BEGIN, whose read transaction starts at its first
SELECT (after the request began, so it sees every write committed before it, and nothing
uncommitted), ended when the request is done. That needs WAL, where a reader neither blocks
writers nor waits for them; a file that is not in WAL mode is left to aiosqlite. The busy
timeout is zero: a reader that would have to wait (another process holding the file in
exclusive locking mode) fails at once, and the request falls back to the normal path, whose
connections wait on their own threads, rather than blocking the loop.
"""

from __future__ import annotations

import os
import sqlite3
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import make_url
from sqlalchemy.engine import Engine

# Idle connections kept between requests. A plan read on the loop never yields between its
# first statement and its end (today), so one is in use at a time; more open if that changes.
MAX_IDLE = 4
# SQLite stores any bytes as TEXT; one invalid UTF-8 sequence would make every read of its row
# fail. Shown as U+FFFD instead (partial of a builtin: no Python frame per value). gateway.db's
# connections decode so too.
TEXT_FACTORY = partial(str, encoding="utf-8", errors="replace")


class Snapshot:
    """One request's read transaction on one connection; `end` gives the connection back."""

    __slots__ = ("_owner", "connection", "events")

    def __init__(self, connection: sqlite3.Connection, owner: LocalReads) -> None:
        self.connection = connection
        self._owner = owner
        # Statements read here fire the engine's events (statement counts, tracing).
        self.events: Engine = owner.events

    def fetchall(self, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
        return self.connection.execute(sql, parameters).fetchall()

    def end(self, *, broken: bool = False) -> None:
        """COMMIT the read transaction (it wrote nothing) and hand the connection back.

        A failed statement leaves the connection in an unknown state: it is closed instead,
        and the next request opens a new one.
        """
        connection, owner = self.connection, self._owner
        if not broken:
            try:
                connection.execute("COMMIT")
            except sqlite3.Error:
                broken = True
        owner.give_back(connection, broken=broken)


class LocalReads:
    """This process's read-only connections to one SQLite file, each used by one request."""

    def __init__(self, path: str, events: Engine) -> None:
        self.path = path
        self.events = events
        self._idle: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        # Connections opened before a fork: never used or closed in the child (SQLite's rule).
        self._inherited: list[sqlite3.Connection] = []

    @classmethod
    def of(cls, url: str, events: Engine) -> LocalReads | None:
        """For a SQLite file URL; None for anything else (PostgreSQL, `:memory:`)."""
        parsed = make_url(url)
        if not parsed.drivername.startswith("sqlite"):
            return None
        database = parsed.database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        return cls(str(Path(database).resolve()), events)

    def begin(self) -> Snapshot | None:
        """A snapshot for one request, or None: read through aiosqlite instead.

        Raises sqlite3.Error when the file cannot be read now (the caller falls back).
        """
        if os.getpid() != self._pid:
            self._inherited.extend(self._idle)
            self._idle = []
            self._pid = os.getpid()
        connection = self._idle.pop() if self._idle else self._open()
        if connection is None:
            return None
        try:
            connection.execute("BEGIN")
        except sqlite3.Error:
            connection.close()
            raise
        return Snapshot(connection, self)

    def give_back(self, connection: sqlite3.Connection, *, broken: bool) -> None:
        if broken or len(self._idle) >= MAX_IDLE or os.getpid() != self._pid:
            connection.close()
        else:
            self._idle.append(connection)

    def close(self) -> None:
        idle, self._idle = self._idle, []
        if os.getpid() == self._pid:
            for connection in idle:
                connection.close()

    def _open(self) -> sqlite3.Connection | None:
        # Any thread may take an idle connection (a CLI's loop, a test's); each is used by one
        # request at a time, so sqlite3's same-thread check guards nothing here.
        connection = sqlite3.connect(
            f"file:{quote(self.path)}?mode=ro",
            uri=True,
            timeout=0,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
        except sqlite3.Error:
            connection.close()
            raise
        if str(mode).lower() != "wal":
            # A rollback journal: a reader's shared lock held across a request's awaits would
            # make writers wait for it. gateway.db's first connection switches the file to WAL
            # for good, so this is a fresh file before that: asked again next request.
            connection.close()
            return None
        connection.text_factory = TEXT_FACTORY
        return connection

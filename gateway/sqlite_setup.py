"""How the gateway opens SQLite files: the folder, the busy timeout, WAL, and who says BEGIN."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from gateway.local_reads import TEXT_FACTORY

SQLITE_BUSY_TIMEOUT_MS = 30_000


def ensure_sqlite_directory(url: str) -> None:
    """SQLite creates the file but not its folder; a fresh checkout may lack the folder."""
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the driver so that BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        # SQLite stores any bytes as TEXT; one invalid UTF-8 sequence would make every read of
        # its row fail. Shown as U+FFFD instead (partial of a builtin: no Python frame per value).
        record.driver_connection.text_factory = TEXT_FACTORY

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("entitlements_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL once; it stays WAL. Idempotent, and safe when processes race.

    Switching needs the file to itself, and SQLite answers "locked" at once, without waiting out
    the busy timeout, when two processes open a fresh (not yet WAL) file together, as uvicorn's
    workers do right after `db upgrade`. The loser retries until the winner has switched it.
    """
    cursor.execute("PRAGMA journal_mode")
    if cursor.fetchone()[0].lower() == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        # Blocks the event loop briefly, but only on the first connections to a fresh file.
        time.sleep(0.01)

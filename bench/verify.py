"""The ledger invariants, checked on the whole database after the write scenarios."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import asyncpg

CHECKS = {
    "balance != sum(grants.remaining)": (
        "SELECT COUNT(*) FROM users u LEFT JOIN (SELECT user_id, SUM(remaining) AS s"
        " FROM credit_grants GROUP BY user_id) g ON g.user_id = u.id"
        " WHERE u.credits_available <> COALESCE(g.s, 0)"
    ),
    # Held credits are the user's (off the grants, on the holds): the ledger sums both.
    "balance + held != sum(events.amount)": (
        "SELECT COUNT(*) FROM users u LEFT JOIN (SELECT user_id, SUM(amount) AS s"
        " FROM credit_events GROUP BY user_id) e ON e.user_id = u.id"
        " WHERE u.credits_available + u.credits_held <> COALESCE(e.s, 0)"
    ),
    "held != sum(active holds)": (
        "SELECT COUNT(*) FROM users u LEFT JOIN (SELECT user_id, SUM(amount) AS s"
        " FROM credit_holds WHERE status = 'active' GROUP BY user_id) h ON h.user_id = u.id"
        " WHERE u.credits_held <> COALESCE(h.s, 0)"
    ),
    "negative balances": (
        "SELECT COUNT(*) FROM users WHERE credits_available < 0 OR credits_held < 0"
    ),
    "negative grants": "SELECT COUNT(*) FROM credit_grants WHERE remaining < 0",
}


@dataclass
class LedgerCheck:
    users: int
    events: int
    violations: dict[str, int]

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def line(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        details = ", ".join(f"{name}: {n}" for name, n in self.violations.items())
        return f"ledger check {verdict} ({self.users:,} users, {self.events:,} events; {details})"


async def check_postgres(dsn: str) -> LedgerCheck:
    conn = await asyncpg.connect(dsn, timeout=30, command_timeout=300)
    try:
        violations = {name: int(await conn.fetchval(sql)) for name, sql in CHECKS.items()}
        users = int(await conn.fetchval("SELECT COUNT(*) FROM users"))
        events = int(await conn.fetchval("SELECT COUNT(*) FROM credit_events"))
    finally:
        await conn.close()
    return LedgerCheck(users, events, violations)


def check_sqlite(path: Path) -> LedgerCheck:
    conn = sqlite3.connect(path)
    try:
        violations = {name: int(conn.execute(sql).fetchone()[0]) for name, sql in CHECKS.items()}
        users = int(conn.execute("SELECT COUNT(*) FROM users").fetchone()[0])
        events = int(conn.execute("SELECT COUNT(*) FROM credit_events").fetchone()[0])
    finally:
        conn.close()
    return LedgerCheck(users, events, violations)


async def keyed_events_postgres(dsn: str, prefix: str) -> int:
    """Ledger events written under one run's idempotency-key prefix (exactly-once check)."""
    conn = await asyncpg.connect(dsn, timeout=30, command_timeout=300)
    try:
        return int(
            await conn.fetchval(
                "SELECT COUNT(*) FROM credit_events WHERE idempotency_key LIKE $1", prefix + "%"
            )
        )
    finally:
        await conn.close()


def keyed_events_sqlite(path: Path, prefix: str) -> int:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute(
            "SELECT COUNT(*) FROM credit_events WHERE idempotency_key LIKE ?", (prefix + "%",)
        ).fetchone()
        return int(row[0])
    finally:
        conn.close()

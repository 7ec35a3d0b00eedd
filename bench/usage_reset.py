"""Usage counts set back to zero between the usage scenario's load runs.

The scenario sends each user +1 and -1 by turns, so one run leaves a user at most one unit up;
but a run ends wherever its seconds end, and with warm-ups, rounds and the profile's run those
units add up until users pass their limits and the answers are `LimitExceeded` (counted as
errors). Each run starts from no usage instead; the history in usage_events is kept.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg

RESET = "UPDATE users SET entitlement_usage = NULL WHERE entitlement_usage IS NOT NULL"


async def reset_postgres(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        await conn.execute(RESET, timeout=60)
    finally:
        await conn.close()


def reset_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path, timeout=30)
    try:
        with conn:
            conn.execute(RESET)
    finally:
        conn.close()

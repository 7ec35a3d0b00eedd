"""pgbench's ceiling for a spend's SQL: a conditional balance UPDATE plus a ledger INSERT.

Run against copies of `users` and `credit_events` (their columns, indexes and the foreign key),
so the bench data and its ledger checks stay untouched; the copies are dropped afterwards.
What a spend keeps of this figure is how much of the database's speed the gateway keeps.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import asyncpg

from bench.spec import LoadResult

_BINARY = "pgbench"
_SETUP = (
    "DROP TABLE IF EXISTS perf_ceiling_events, perf_ceiling_users",
    "DROP SEQUENCE IF EXISTS perf_ceiling_events_id_seq",
    "CREATE TABLE perf_ceiling_users AS SELECT id, credits_available, updated_at FROM users",
    "ALTER TABLE perf_ceiling_users ADD PRIMARY KEY (id)",
    "CREATE TABLE perf_ceiling_events"
    " (LIKE credit_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)",
    "CREATE SEQUENCE perf_ceiling_events_id_seq OWNED BY perf_ceiling_events.id",
    "ALTER TABLE perf_ceiling_events"
    " ALTER COLUMN id SET DEFAULT nextval('perf_ceiling_events_id_seq')",
    "ALTER TABLE perf_ceiling_events ADD FOREIGN KEY (user_id) REFERENCES perf_ceiling_users (id)",
    # Enough credits that no spend is refused: the ceiling of spends, not of refusals.
    "UPDATE perf_ceiling_users SET credits_available = credits_available + 1000000",
    "VACUUM ANALYZE perf_ceiling_users",
)
_TEARDOWN = ("DROP TABLE IF EXISTS perf_ceiling_events, perf_ceiling_users",)
# One spend of 1 credit with a fresh idempotency key, as `consumeCredits` sends it: the
# conditional UPDATE returns the balance the event records.
_SCRIPT = """\\set uid random(1, {users})
\\set key random(1, 9223372036854775806)
BEGIN;
UPDATE perf_ceiling_users SET credits_available = credits_available - 1, updated_at = now()
  WHERE id = :uid AND credits_available >= 1 RETURNING credits_available \\gset
INSERT INTO perf_ceiling_events (user_id, kind, amount, balance_after, reason, source, actor,
  request_id, idempotency_key, fingerprint, created_at)
  VALUES (:uid, 'consume', -1, :credits_available, 'pgbench', 'usage', 'pgbench', NULL,
  'pgbench-' || :client_id || '-' || :key, NULL, now());
END;
"""
_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.M)


def available() -> bool:
    return shutil.which(_BINARY) is not None


async def _run_sql(dsn: str, statements: tuple[str, ...]) -> int:
    conn = await asyncpg.connect(dsn, ssl=False)
    try:
        for statement in statements:
            await conn.execute(statement)
        return int(await conn.fetchval("SELECT max(id) FROM users") or 0)
    finally:
        await conn.close()


def measure_ceiling(
    dsn: str, *, connections: int, seconds: float, workdir: Path
) -> LoadResult | str:
    """pgbench's spends per second on the bench database, or why it could not run."""
    if not available():
        return "pgbench not found (apt-get install postgresql-client): no database ceiling"
    users = asyncio.run(_run_sql(dsn, _SETUP))
    try:
        script = workdir / "pgbench-spend.sql"
        script.write_text(_SCRIPT.format(users=max(users, 1)))
        threads = min(2, connections)
        command = [_BINARY, "-n", "-M", "prepared", "-c", str(connections), "-j", str(threads)]
        command += ["-T", str(max(1, round(seconds))), "-f", str(script), dsn]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=seconds + 120,
            check=False,
        )
    finally:
        asyncio.run(_run_sql(dsn, _TEARDOWN))
    tps, processed = _TPS.search(done.stdout), _PROCESSED.search(done.stdout)
    if done.returncode != 0 or tps is None or processed is None:
        return f"pgbench failed ({done.returncode}): {(done.stderr or done.stdout)[-300:]}"
    count = int(processed.group(1))
    latency = _LATENCY.search(done.stdout)
    failed = _FAILED.search(done.stdout)
    mean_ms = float(latency.group(1)) if latency else 0.0
    return LoadResult(
        requests=count,
        seconds=count / float(tps.group(1)),
        # pgbench reports the mean, not percentiles: both columns show the mean.
        p50_ms=mean_ms,
        p99_ms=mean_ms,
        errors=int(failed.group(1)) if failed else 0,
        driver="pgbench",
    )

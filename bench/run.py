"""`python -m bench`: the gateway against the baseline (and PostGraphile), side by side.

  python -m bench                      # defaults: 10k users, 500k events, 20k payments
  python -m bench --quick              # smoke run: small data, 3 s per load
  python -m bench --databases postgresql --scenarios viewer,consume --seconds 20
  python -m bench --profile            # also py-spy the gateway under each load

Steps: generate the data set; create PostgreSQL database `entitlements_bench` and a SQLite file,
migrate both with `entitlements db upgrade`, bulk-load them, make API keys and JWTs; then per
database start the gateway (`entitlements serve`), the baseline (bench/baseline.py) and, on
PostgreSQL, PostGraphile; count SQL statements per request; drive each scenario against each
target from a separate load process (a short warm-up, then the measured run); check the ledger;
print the table and write bench-results/<timestamp>.json. Servers are stopped and the bench
database dropped at the end whatever happens (--keep keeps the database and the SQLite file).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import platform
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit

import asyncpg
import httpx

from bench import (
    chart,
    counting,
    drivers,
    gcwatch,
    pgbench,
    profiling,
    report,
    seed,
    usage_reset,
    verify,
)
from bench.scenarios import (
    BASELINE,
    GATEWAY,
    INTROSPECTION,
    PGBENCH,
    POSTGRAPHILE,
    POSTGRAPHILE_EMAIL,
    RELATIVE,
    RESERVE_SETTLE,
    SCENARIOS,
    STRAWBERRY,
    TARGETS,
    Credentials,
    metrics_query,
    signed_webhook,
    spec_for,
    write_webhook_pool,
)
from bench.servers import (
    BIN,
    REPO,
    Server,
    ServerError,
    Servers,
    gateway_env,
    install_postgraphile,
    start_baseline,
    start_gateway,
    start_plain_strawberry,
    start_postgraphile,
)
from bench.spec import LoadResult, RequestSpec, expand, expand_then
from gateway.settings import DEFAULT_CATALOG
from resolvers.catalog.model import Catalog, load_catalog

DEFAULT_PG = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
QUICK = {"users": 1_000, "events": 20_000, "payments": 1_000, "seconds": 3.0, "warmup": 1.0}
FULL = {"users": 10_000, "events": 500_000, "payments": 20_000, "seconds": 10.0, "warmup": 2.0}
# Webhooks are signed before each run; a run uses at most this many per second of load.
WEBHOOK_POOL_MARGIN = 1.5
# gateway.db.Database's PostgreSQL budget per process: a pool of 20 and 5 overflow.
GATEWAY_PG_CONNECTIONS = 25
LOOPBACK = ("127.0.0.1", "localhost", "::1")
ADMIN_TIMEOUT_S = 120.0

_started = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _started:6.1f}s] {message}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="smoke run: small data, short loads")
    p.add_argument("--users", type=int, help=f"users (default {FULL['users']:,})")
    p.add_argument("--events", type=int, help=f"ledger events (default {FULL['events']:,})")
    p.add_argument("--payments", type=int, help=f"payments (default {FULL['payments']:,})")
    p.add_argument("--seconds", type=float, help="measured seconds per scenario and target (10)")
    p.add_argument("--warmup", type=float, help="warm-up seconds before each measured run (2)")
    p.add_argument("--connections", type=int, default=32, help="concurrent connections (32)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers per server (1)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="runs of every target per scenario, taken in turns; the table shows each median (1)",
    )
    p.add_argument("--databases", default="postgresql,sqlite", help="postgresql,sqlite")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=",".join(SCENARIOS))
    p.add_argument("--driver", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument(
        "--wrk-threads", type=int, default=1, help="wrk threads (1: leave CPU to servers)"
    )
    p.add_argument(
        "--postgraphile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare the viewer read with PostGraphile v4 (npm, installed in /tmp)",
    )
    p.add_argument("--profile", action="store_true", help="py-spy the gateway under each load")
    p.add_argument("--keep", action="store_true", help="keep the bench database and SQLite file")
    p.add_argument("--pg-url", default=DEFAULT_PG, help="PostgreSQL server (admin database)")
    p.add_argument("--pg-db", default="entitlements_bench", help="the database to create")
    p.add_argument("--seed", type=int, default=6, help="random seed of the data set")
    p.add_argument("--output", type=Path, default=REPO / "bench-results")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for database in args.databases:
        if database not in ("postgresql", "sqlite"):
            p.error(f"unknown database {database!r}")
    for scenario in args.scenarios:
        if scenario not in SCENARIOS:
            p.error(f"unknown scenario {scenario!r}")
    if urlsplit(args.pg_url).hostname not in LOOPBACK:
        p.error("--pg-url must be on a loopback address")
    if not args.pg_db.replace("_", "").isalnum():
        p.error("--pg-db: letters, digits and underscores only")
    if args.users < 1 or args.events < 0 or args.payments < 0:
        p.error("sizes must be positive")
    if not 0 < args.seconds <= 600 or not 0 <= args.warmup <= 60:
        p.error("--seconds must be in (0, 600], --warmup in [0, 60]")
    if not 1 <= args.connections <= 1000 or not 1 <= args.workers <= 16:
        p.error("--connections 1..1000, --workers 1..16")
    if not 1 <= args.rounds <= 9:
        p.error("--rounds 1..9")
    return args


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="entitlements-bench-"))
        self.servers = Servers(self.workdir)
        self.catalog: Catalog = load_catalog(DEFAULT_CATALOG)
        self.tag = secrets.token_hex(3)
        self.jwt_secret = secrets.token_urlsafe(32)
        self.webhook_secret = f"whsec_bench{secrets.token_hex(16)}"
        self.rows: list[report.Row] = []
        self.notes: list[str] = []
        self.checks: list[dict[str, Any]] = []
        self.statements: dict[str, dict[str, Any]] = {}
        self.profiles: dict[str, Any] = {}
        self.urls: dict[str, str] = {}
        self.pg_created = False
        self.sqlite_path = self.workdir / "bench.db"
        self.driver = self._pick_driver()
        self.data: seed.Dataset | None = None
        self.creds: Credentials | None = None
        self.prices: dict[int, str] = {}
        self.gc_stats: Path | None = None
        # Other work on the machine shows here: the 1-minute load average when the run began.
        self.load_at_start = os.getloadavg()[0]
        self.keys: dict[str, dict[str, str]] = {}
        self.tokens: list[str] = []
        self.stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")

    # --- set-up --------------------------------------------------------------------------

    def _pick_driver(self) -> str:
        wanted = self.args.driver
        if wanted == "wrk" and not drivers.wrk_available():
            raise SystemExit("--driver wrk: wrk is not installed (apt-get install wrk)")
        if wanted == "auto":
            return "wrk" if drivers.wrk_available() else "python"
        return wanted

    @property
    def pg_admin(self) -> str:
        return self.args.pg_url.replace("postgresql+asyncpg://", "postgresql://")

    @property
    def pg_dsn(self) -> str:
        return self.pg_admin.rsplit("/", 1)[0] + "/" + self.args.pg_db

    def machine(self) -> dict[str, Any]:
        cpu = "unknown"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        return {
            "cores": os.cpu_count(),
            "cpu": cpu,
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "postgresql": self.urls.get("pg_version"),
            "load_driver": self.driver,
            "load_average_at_start": self.load_at_start,
        }

    def migrate(self, url: str) -> None:
        """`entitlements db upgrade`, as an operator migrates."""
        env = {**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "WARNING"}
        done = subprocess.run(
            [str(BIN / "entitlements"), "db", "upgrade"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if done.returncode != 0:
            raise RuntimeError(f"entitlements db upgrade failed: {done.stderr[-2000:]}")

    async def _pg_admin(self, *statements: str) -> str:
        conn = await asyncpg.connect(self.pg_admin, timeout=10)
        try:
            for statement in statements:
                # Bounded: a DROP waiting on someone else's session must not hang the run.
                await conn.execute(statement, timeout=ADMIN_TIMEOUT_S)
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    def prepare(self) -> None:
        args = self.args
        sizes = seed.Sizes(args.users, args.events, args.payments)
        say(
            f"generating {sizes.users:,} users, {sizes.events:,} ledger events,"
            f" {sizes.payments:,} payments (seed {args.seed})"
        )
        started = time.perf_counter()
        data = seed.generate(sizes, self.catalog, seed=args.seed)
        self.data = data
        say(f"generated in {time.perf_counter() - started:.1f}s: {data.counts()}")
        now = datetime.now(UTC)
        if "postgresql" in args.databases:
            name = args.pg_db
            version = asyncio.run(
                self._pg_admin(
                    f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"
                )
            )
            self.pg_created = True
            self.urls["pg_version"] = f"PostgreSQL {version}"
            url = self.pg_dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
            self.urls["postgresql"] = url
            self.migrate(url)
            seconds = asyncio.run(seed.load_postgres(self.pg_dsn, data))
            say(f"PostgreSQL database {name} migrated and seeded (COPY) in {seconds:.1f}s")
            self.keys["postgresql"] = asyncio.run(seed.create_keys(url, now))
        if "sqlite" in args.databases:
            url = f"sqlite+aiosqlite:///{self.sqlite_path}"
            self.urls["sqlite"] = url
            self.migrate(url)
            seconds = seed.load_sqlite(self.sqlite_path, data)
            say(
                f"SQLite file {self.sqlite_path} migrated and seeded (executemany)"
                f" in {seconds:.1f}s"
            )
            self.keys["sqlite"] = asyncio.run(seed.create_keys(url, now))
        tokens = self.workdir / "tokens.txt"
        seed.write_tokens(tokens, args.users, self.jwt_secret)
        self.tokens = tokens.read_text().split()
        for uid in data.subscribers:
            tier = self.catalog.tier(data.tiers[uid])
            price = tier.stripe_price_ids.get(self.catalog.default_currency) if tier else None
            if price:
                self.prices[uid] = price
        say(f"API keys and {args.users:,} end-user JWTs ready")

    def credentials(self, database: str) -> Credentials:
        keys = self.keys[database]
        return Credentials(
            users=self.args.users,
            tokens_file=self.workdir / "tokens.txt",
            service_key=keys["service"],
            support_key=keys["support"],
            webhook_secret=self.webhook_secret,
        )

    # --- one database ----------------------------------------------------------------------

    def bench_database(self, database: str) -> None:
        args = self.args
        url = self.urls[database]
        creds = self.credentials(database)
        targets: dict[str, Server] = {}
        say(f"{database}: starting the gateway and the baseline ({args.workers} worker(s) each)")
        self.gc_stats = self.workdir / f"gc-{database}.json" if args.profile else None
        targets[GATEWAY] = start_gateway(
            self.servers,
            database,
            url,
            self.jwt_secret,
            self.webhook_secret,
            args.workers,
            gc_stats=self.gc_stats,
        )
        targets[BASELINE] = start_baseline(
            self.servers, database, url, self.webhook_secret, args.workers
        )
        compared = {"viewer", "consume"} & set(args.scenarios)
        if database == "postgresql" and args.postgraphile and compared:
            binary = install_postgraphile(self.notes)
            if binary is not None:
                try:
                    targets[POSTGRAPHILE] = start_postgraphile(self.servers, binary, self.pg_dsn)
                except ServerError as exc:
                    self.notes.append(f"PostGraphile skipped: it did not start: {exc}"[:600])
            if POSTGRAPHILE not in targets:
                say(self.notes[-1])
            else:
                # The same server answers both of its reads.
                targets[POSTGRAPHILE_EMAIL] = targets[POSTGRAPHILE]
        if database == "postgresql" and "viewer" in args.scenarios:
            try:
                targets[STRAWBERRY] = start_plain_strawberry(
                    self.servers, self.pg_dsn, args.workers
                )
            except ServerError as exc:
                self._note(f"plain Strawberry skipped: it did not start: {exc}"[:600])
        gateway = targets[GATEWAY]

        scenarios = list(args.scenarios)
        mquery = None
        if "metrics" in scenarios:
            mquery = self.probe_metrics(gateway, creds)
            if mquery is None:
                scenarios.remove("metrics")
                self._note(
                    f"{database}: metrics(days: 7) skipped: the gateway's schema has no"
                    " Query.metrics field yet (schema.graphql)"
                )
        if "webhook" in scenarios and not self.probe_webhook(gateway):
            scenarios.remove("webhook")
            self._note(
                f"{database}: webhook skipped: POST /api/billing/webhook answers 404"
                " (the Stripe route is not merged yet)"
            )
        if "webhook" in scenarios and not self.prices:
            scenarios.remove("webhook")
            self._note(f"{database}: webhook skipped: the data set has no subscribers")

        self.count_statements(database, scenarios, creds, mquery, targets[BASELINE])

        # A scenario whose bar is a share of another's is measured in that one's turns: the
        # two medians then come from the same minutes of a shared machine.
        paired = {
            reference: scenario
            for scenario, (reference, _) in RELATIVE.items()
            if scenario in scenarios and reference in scenarios
        }
        for scenario in scenarios:
            if scenario in paired.values():
                continue  # measured with its reference
            # In turns, not one target's rounds after another's: a slow spell of a shared
            # machine then lands on every target alike.
            for turn in range(args.rounds):
                for target in TARGETS:
                    server = targets.get(target)
                    spec = spec_for(scenario, target, creds, mquery)
                    if server is None or spec is None:
                        continue
                    self.measure(database, scenario, target, server, spec, turn=turn)
                if scenario == "consume" and database == "postgresql":
                    self.measure_ceiling()  # in the same turns: its median is compared
                relative = paired.get(scenario)
                if relative is not None:
                    spec = spec_for(relative, GATEWAY, creds, mquery)
                    if spec is not None:
                        self.measure(database, relative, GATEWAY, gateway, spec, turn=turn)
            if scenario == "consume":
                self.check_ledger(database, "after consumeCredits")
            if scenario == RESERVE_SETTLE:
                self.check_ledger(database, "after reserveCredits and settleHold")
        self.check_ledger(database, "at the end")
        for server in {id(s): s for s in targets.values()}.values():
            self.servers.stop(server)

    def _note(self, note: str) -> None:
        self.notes.append(note)
        say(note)

    def probe_metrics(self, gateway: Server, creds: Credentials) -> str | None:
        response = httpx.post(
            gateway.base + "/graphql",
            json={"query": INTROSPECTION},
            headers={"Authorization": f"Bearer {creds.support_key}"},
            timeout=30,
        )
        return metrics_query(response.json()) if response.status_code == 200 else None

    def probe_webhook(self, gateway: Server) -> bool:
        """Is the Stripe route there? An unsigned body is refused (4xx/503) if it is; 404 if not."""
        response = httpx.post(gateway.base + "/api/billing/webhook", content=b"{}", timeout=30)
        return response.status_code not in (404, 405)

    def _counted_uid(self, n: int) -> int:
        return 1 + (n * 7919) % self.args.users

    def request_maker(
        self, spec: RequestSpec, scenario: str, label: str
    ) -> Callable[[int], counting.Request]:
        def make(n: int) -> counting.Request:
            uid = self._counted_uid(n)
            pooled = None
            if scenario == "webhook":
                pooled = signed_webhook(self.webhook_secret, self.prices, f"{label}{self.tag}", n)
            token = self.tokens[uid - 1] if spec.tokens_file else None
            return expand(spec, uid, n, token=token, pooled=pooled)

        return make

    def _then(self, spec: RequestSpec, n: int, answer: bytes) -> counting.Request | None:
        return expand_then(spec, self._counted_uid(n), n, answer)

    def count_statements(
        self,
        database: str,
        scenarios: list[str],
        creds: Credentials,
        mquery: str | None,
        baseline: Server,
    ) -> None:
        prefix = f"count-{self.tag}-{database}"
        gateway_requests = {}
        gateway_then: dict[str, Callable[[int, bytes], counting.Request | None]] = {}
        baseline_requests = {}
        for scenario in scenarios:
            spec = spec_for(scenario, GATEWAY, creds, mquery)
            if spec is not None:
                # A key per scenario: one key names one operation, so consume's keys reused
                # by recordUsage would be counted as conflicts.
                spec = spec.with_key_prefix(f"{prefix}-{scenario}-gw")
                gateway_requests[scenario] = self.request_maker(spec, scenario, "countgw")
                if spec.two_step:
                    gateway_then[scenario] = partial(self._then, spec)
            spec = spec_for(scenario, BASELINE, creds, mquery)
            if spec is not None:
                spec = spec.with_key_prefix(prefix + "-bl")
                baseline_requests[scenario] = self.request_maker(spec, scenario, "countbl")(0)
        env = gateway_env(self.urls[database], self.jwt_secret, self.webhook_secret)
        try:
            counts = asyncio.run(counting.count_gateway(env, gateway_requests, gateway_then))
        except Exception as exc:  # counting is a side figure: report it, keep benchmarking
            counts = {}
            self._note(f"{database}: statement counting failed: {type(exc).__name__}: {exc}")
        base_counts = counting.count_baseline(baseline.base, baseline_requests)
        self.statements[database] = {
            s: {
                "gateway_warm": c.warm,
                "gateway_first": c.cold,
                "gateway_status": c.status,
                "gateway_sql": c.statements,
                "baseline": base_counts.get(s),
            }
            for s, c in counts.items()
        }
        for scenario, figures in self.statements[database].items():
            say(
                f"{database} {scenario}: SQL statements per request: gateway"
                f" {figures['gateway_warm']} (first request {figures['gateway_first']}),"
                f" baseline {figures['baseline']}"
            )

    # --- one load run ----------------------------------------------------------------------

    def measure(
        self,
        database: str,
        scenario: str,
        target: str,
        server: Server,
        spec: RequestSpec,
        *,
        turn: int = 0,
    ) -> None:
        args = self.args
        name = f"{database}-{scenario}-{target}" + (f"-r{turn}" if turn else "")
        prefix = f"bench-{self.tag}-{name}"
        warm: LoadResult | None = None
        if args.warmup > 0:
            self._fresh_usage(database, scenario)
            warm_spec = self._prepared(spec, scenario, f"{name}-w", prefix + "-w", rate=None)
            warm = self._load(warm_spec, server, args.warmup, f"{name}-warmup")
        rate = warm.rps if warm else None
        run_spec = self._prepared(spec, scenario, f"{name}-m", prefix + "-m", rate=rate)
        load_average = os.getloadavg()[0]
        # Every target's, summed over its processes (workers, a launcher's node): what a request
        # costs the server wherever the shared cores' time went.
        self._fresh_usage(database, scenario)
        cpu_before = gcwatch.tree_cpu_seconds(server.pid)
        result = self._load(run_spec, server, args.seconds, name)
        cpu_after = gcwatch.tree_cpu_seconds(server.pid) if cpu_before is not None else None
        row = report.Row(
            scenario,
            database,
            target,
            result,
            statements=self._statements(database, scenario, target),
            load_average=round(load_average, 2),
        )
        if cpu_before is not None and cpu_after is not None and result.requests:
            row.cpu_us = round(1e6 * (cpu_after - cpu_before) / result.requests, 1)
        if spec.pool_header and run_spec.pool_file:
            pooled = Path(run_spec.pool_file).read_text().count("\n")
            if result.requests > pooled:
                row.notes.append(f"pre-signed pool of {pooled} exhausted: later events repeat")
        if spec.two_step:
            row.notes.append("per iteration of 2 requests, by the Python load generator")
        if result.errors and result.sample:
            row.notes.append(f"first error: {result.sample[:300]}")
        self.rows.append(row)
        say(
            f"{database:<10} {scenario:<8} {target:<12} {result.rps:9,.0f} req/s"
            f"  p50 {result.p50_ms:7.1f} ms  p99 {result.p99_ms:7.1f} ms  errors {result.errors}"
            + (f"  CPU {row.cpu_us:,.0f} µs/request" if row.cpu_us else "")
            + (f"  ({row.notes[-1]})" if row.notes else "")
        )
        if scenario in ("consume", RESERVE_SETTLE):
            self.check_exactly_once(database, scenario, target, prefix, warm, result)
        if args.profile and target == GATEWAY:
            self.profile(database, scenario, server, spec, prefix)

    def measure_ceiling(self) -> None:
        """pgbench's spends per second on the same database, with the gateway's connections."""
        connections = min(self.args.connections, GATEWAY_PG_CONNECTIONS * self.args.workers)
        result = pgbench.measure_ceiling(
            self.pg_dsn, connections=connections, seconds=self.args.seconds, workdir=self.workdir
        )
        if isinstance(result, str):
            self._note(f"postgresql: {result}")
            return
        row = report.Row("consume", "postgresql", PGBENCH, result, statements=2)
        row.notes.append(f"{connections} connections, mean latency in p50 and p99")
        self.rows.append(row)
        say(f"{'postgresql':<10} {'consume':<8} {PGBENCH:<12} {result.rps:9,.0f} req/s (ceiling)")

    def _prepared(
        self, spec: RequestSpec, scenario: str, label: str, key_prefix: str, rate: float | None
    ) -> RequestSpec:
        spec = spec.with_key_prefix(key_prefix)
        if scenario != "webhook":
            return spec
        seconds = self.args.seconds if rate is not None else self.args.warmup
        per_second = rate if rate is not None else 1500.0
        count = int(per_second * seconds * WEBHOOK_POOL_MARGIN) + 500
        pool = self.workdir / f"{label}.pool"
        write_webhook_pool(pool, count, self.webhook_secret, self.prices, f"{label}{self.tag}")
        return spec.with_pool(str(pool))

    def _load(self, spec: RequestSpec, server: Server, seconds: float, name: str) -> LoadResult:
        return drivers.run_load(
            "python" if spec.two_step else self.driver,  # wrk's Lua cannot chain requests
            spec,
            server.port,
            seconds,
            self.args.connections,
            self.args.wrk_threads,
            self.workdir,
            name,
        )

    def _statements(self, database: str, scenario: str, target: str) -> int | None:
        figures = self.statements.get(database, {}).get(scenario)
        if figures is None:
            return None
        if target == GATEWAY:
            return figures["gateway_warm"]
        if target == BASELINE:
            return figures["baseline"]
        return None

    # --- checks ----------------------------------------------------------------------------

    def _fresh_usage(self, database: str, scenario: str) -> None:
        if scenario != "usage":
            return
        if database == "postgresql":
            asyncio.run(usage_reset.reset_postgres(self.pg_dsn))
        else:
            usage_reset.reset_sqlite(self.sqlite_path)

    def check_ledger(self, database: str, when: str) -> None:
        if database == "postgresql":
            check = asyncio.run(verify.check_postgres(self.pg_dsn))
        else:
            check = verify.check_sqlite(self.sqlite_path)
        line = f"{database} {when}: {check.line()}"
        self.checks.append({"database": database, "when": when, "ok": check.ok, "line": line})
        say(line)

    def check_exactly_once(
        self,
        database: str,
        scenario: str,
        target: str,
        prefix: str,
        warm: LoadResult | None,
        result: LoadResult,
    ) -> None:
        """One ledger event per successful spend (a hold and its settlement: two per pair); a
        few more only for iterations cut off in flight when the load stopped."""
        if database == "postgresql":
            written = asyncio.run(verify.keyed_events_postgres(self.pg_dsn, prefix))
        else:
            written = verify.keyed_events_sqlite(self.sqlite_path, prefix)
        per_answer = 2 if scenario == RESERVE_SETTLE else 1
        answered = result.ok + (warm.ok if warm else 0)
        runs = 2 if warm else 1
        in_flight = written - per_answer * answered
        ok = 0 <= in_flight <= runs * self.args.connections * per_answer
        answers = "settled pairs" if per_answer == 2 else "CreditChange answers"
        line = (
            f"{database} {scenario} {target}: {written:,} ledger events for {answered:,}"
            f" {answers} ({in_flight:+d} cut off in flight when the load stopped):"
            f" exactly-once {'OK' if ok else 'FAILED'}"
        )
        self.checks.append(
            {"database": database, "when": f"{scenario} {target}", "ok": ok, "line": line}
        )
        say(line)

    # --- profiling -------------------------------------------------------------------------

    def profile(
        self, database: str, scenario: str, server: Server, spec: RequestSpec, prefix: str
    ) -> None:
        """A separate load run under py-spy, so the measured figures carry no sampling cost."""
        if profiling.pyspy() is None:
            if "py-spy" not in " ".join(self.notes):
                self._note("--profile: py-spy is not installed (pip install py-spy); skipped")
            return
        seconds = max(3.0, min(self.args.seconds, 10.0))
        name = f"{database}-{scenario}-gateway-profile"
        raw = self.args.output / f"profile-{self.stamp}-{database}-{scenario}.txt"
        raw.parent.mkdir(parents=True, exist_ok=True)
        run_spec = self._prepared(
            spec, scenario, name, prefix + "-p", rate=self.rows[-1].result.rps
        )
        self._fresh_usage(database, scenario)
        gc_before = gcwatch.read(self.gc_stats) if self.gc_stats else None
        cpu_before = gcwatch.cpu_seconds(server.pid)
        sampler = profiling.start(server.pid, seconds, raw, subprocesses=self.args.workers > 1)
        try:
            self._load(run_spec, server, seconds, name)
        finally:
            try:
                sampler.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                sampler.kill()
                sampler.wait()
        if not raw.exists():
            self._note(f"py-spy wrote nothing for {name}: {sampler.stderr.read().decode()[-300:]}")
            return
        summary = profiling.summarize(raw)
        gc_line, gc_figures = self._gc_share(server, gc_before, cpu_before)
        self.profiles[f"{database}/{scenario}"] = {
            **summary.as_dict(),
            "gc": gc_figures,
            "raw": str(raw),
        }
        say(f"profile of the gateway, {database} {scenario} ({raw}):")
        for line in [*summary.lines(), gc_line]:
            print(line, flush=True)

    def _gc_share(
        self, server: Server, before: dict[str, Any] | None, cpu_before: float | None
    ) -> tuple[str, dict[str, Any] | None]:
        """The cyclic collector's share of the process's CPU during the profile run."""
        after = gcwatch.read(self.gc_stats) if self.gc_stats else None
        cpu_after = gcwatch.cpu_seconds(server.pid)
        if before is None or after is None or cpu_before is None or cpu_after is None:
            return "  garbage collector: not measured (workers > 1 or no stats)", None
        per_generation = [a - b for a, b in zip(after["seconds"], before["seconds"], strict=True)]
        counts = [a - b for a, b in zip(after["counts"], before["counts"], strict=True)]
        cpu = max(cpu_after - cpu_before, 1e-9)
        gc_seconds = sum(per_generation)
        figures = {
            "cpu_seconds": round(cpu, 2),
            "gc_seconds": round(gc_seconds, 2),
            "gc_share": round(gc_seconds / cpu, 3),
            "collections": counts,
            "seconds_by_generation": [round(x, 3) for x in per_generation],
        }
        line = (
            f"  garbage collector: {gc_seconds:.2f}s of {cpu:.2f}s CPU"
            f" ({100 * gc_seconds / cpu:.0f}%); collections by generation {counts},"
            f" seconds {[round(x, 2) for x in per_generation]}"
        )
        return line, figures

    # --- the whole run ---------------------------------------------------------------------

    def run(self) -> int:
        args = self.args
        say(
            f"load: {self.driver}, {args.connections} connections, {args.warmup:g}s warm-up +"
            f" {args.seconds:g}s per scenario and target; {args.workers} worker(s) per server"
        )
        if self.driver != "wrk":
            say("wrk not found: using bench.load (asyncio) as the load generator")
        self.prepare()
        for database in args.databases:
            self.bench_database(database)
        return self.finish()

    def finish(self) -> int:
        self.rows = report.medians(self.rows)
        lines = report.table(self.rows)
        verdicts = report.verdicts(self.rows)
        machine = self.machine()
        print()
        print(
            f"Machine: {machine['cores']} cores ({machine['cpu']}),"
            f" {machine.get('postgresql') or 'no PostgreSQL'},"
            f" SQLite {machine['sqlite']}, Python {machine['python']};"
            f" load by {self.driver}, {self.args.connections} connections,"
            f" {self.args.workers} worker(s) per server, {self.args.seconds:g}s per run"
        )
        assert self.data is not None
        print(f"Data set: {self.data.counts()}")
        print()
        for line in lines:
            print(line)
        print()
        for line in verdicts + [c["line"] for c in self.checks] + self.notes:
            print(f"- {line}")
        path = self.args.output / f"{self.stamp}.json"
        report.write_json(
            path,
            {
                "created": self.stamp,
                "command": " ".join(sys.argv),
                "machine": {**machine, "load_average_at_end": os.getloadavg()[0]},
                "settings": {
                    k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()
                },
                "data_set": self.data.counts(),
                "results": [row.as_dict() for row in self.rows],
                "ratios": {
                    f"{r.database}/{r.scenario}": {
                        "gateway/baseline": report.ratio(
                            self.rows, r.scenario, r.database, GATEWAY, BASELINE
                        ),
                        "gateway/postgraphile": report.ratio(
                            self.rows, r.scenario, r.database, GATEWAY, POSTGRAPHILE
                        ),
                        "gateway/pgbench": report.ratio(
                            self.rows, r.scenario, r.database, GATEWAY, PGBENCH
                        ),
                    }
                    for r in self.rows
                    if r.target == GATEWAY
                },
                "verdicts": verdicts,
                "statements": self.statements,
                "checks": self.checks,
                "notes": self.notes,
                "profiles": self.profiles,
                "table": lines,
            },
        )
        print(f"\nwritten: {path}")
        if self.rows:
            print(f"chart: {chart.draw(self.rows, path.with_suffix('.png')).path}")
        return 0 if all(c["ok"] for c in self.checks) else 1

    def cleanup(self) -> None:
        self.servers.stop_all()
        if self.pg_created and not self.args.keep:
            try:
                asyncio.run(
                    self._pg_admin(f"DROP DATABASE IF EXISTS {self.args.pg_db} WITH (FORCE)")
                )
            except (OSError, asyncpg.PostgresError) as exc:
                print(f"could not drop {self.args.pg_db}: {exc}", file=sys.stderr)
        if self.args.keep:
            print(f"kept: PostgreSQL database {self.args.pg_db}, {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so the finally block stops servers and drops the database.
    raise KeyboardInterrupt(f"signal {signum}")


def _exclusive(database: str) -> IO[str]:
    """One run per bench database at a time: a second would drop the first one's database."""
    handle = (Path(tempfile.gettempdir()) / f"entitlements-bench-{database}.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SystemExit(
            f"another `python -m bench` is using database {database};"
            " wait for it, or give this run its own --pg-db"
        ) from None
    return handle  # the lock lasts as long as the file stays open


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lock = _exclusive(args.pg_db)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    bench = Bench(args)
    try:
        return bench.run()
    except KeyboardInterrupt:
        print("interrupted: stopping servers", file=sys.stderr)
        return 130
    finally:
        bench.cleanup()
        lock.close()

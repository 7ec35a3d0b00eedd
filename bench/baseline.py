"""The baseline: the gateway's database work with hand-written SQL, and nothing else.

No GraphQL, no ORM, no auth, no middleware: a Starlette app served by uvicorn exactly like the
gateway (`uvicorn bench.baseline:create_app --factory`). It runs the statements the gateway
runs for each benchmarked request, on the same driver (asyncpg; aiosqlite on SQLite) with the same
connection budget as gateway.db.Database (PostgreSQL: 10 pooled + 10 overflow; SQLite: SQLAlchemy's
default 5 + 10), and answers the same JSON. What it reaches is what the database and the HTTP
stack can do on this machine; the gateway's ratio to it is the cost of everything else.

Every response carries `x-bench-statements`: how many SQL statements it sent (BEGIN/COMMIT
excluded), the figure the report prints next to the gateway's.

Environment: BASELINE_DATABASE_URL (a gateway-style URL), STRIPE_WEBHOOK_SECRET,
BASELINE_POOL_SIZE / BASELINE_MAX_OVERFLOW (default: the gateway's for the database).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiosqlite
import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.settings import DEFAULT_CATALOG
from resolvers.catalog.model import Catalog, load_catalog

SQLITE_BUSY_TIMEOUT_MS = 30_000
WEBHOOK_TOLERANCE_S = 300
UNPAID_STATUSES = ("failed", "pending", "canceled")
_PARAM = re.compile(r"\$(\d+)")


def fingerprint(operation: str, **args: Any) -> str:
    """resolvers.ledger.credits.fingerprint, copied: the same digest goes into the same column."""
    text = json.dumps([operation, args], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def sqlite_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def as_time(value: Any) -> datetime | None:
    """A timestamp as either driver returns it: asyncpg a datetime, SQLite a naive UTC string."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


class NotInDataSet(Exception):
    """A state the seeded data never has (a grant expiring mid-run); answered as an error."""


# --- one connection API over both drivers ----------------------------------------------------


class Conn:
    """$n-style SQL on either driver; counts statements for the x-bench-statements header."""

    def __init__(self, raw: Any, sqlite: bool) -> None:
        self.raw = raw
        self.sqlite = sqlite
        self.count = 0

    def _args(self, args: Sequence[Any]) -> Sequence[Any]:
        if not self.sqlite:
            return args
        return [sqlite_time(a) if isinstance(a, datetime) else a for a in args]

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.count += 1
        if self.sqlite:
            async with self.raw.execute(_sqlite_sql(sql), self._args(args)) as cursor:
                return list(await cursor.fetchall())
        return await self.raw.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        self.count += 1
        if self.sqlite:
            async with self.raw.execute(_sqlite_sql(sql), self._args(args)) as cursor:
                return await cursor.fetchone()
        return await self.raw.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]

    async def execute(self, sql: str, *args: Any) -> None:
        self.count += 1
        if self.sqlite:
            await self.raw.execute(_sqlite_sql(sql), self._args(args))
        else:
            await self.raw.execute(sql, *args)

    def in_list(self, first: int, values: Sequence[int]) -> tuple[str, list[Any]]:
        """`= ANY($n)` on PostgreSQL (one array), `IN (?n, …)` on SQLite (one per value)."""
        if not self.sqlite:
            return f"= ANY(${first}::int[])", [list(values)]
        marks = ", ".join(f"${first + i}" for i in range(len(values)))
        return f"IN ({marks})", list(values)


_SQLITE_SQL: dict[str, str] = {}


def _sqlite_sql(sql: str) -> str:
    converted = _SQLITE_SQL.get(sql)
    if converted is None:
        # SQLite has numbered ?NNN parameters, and its write lock is BEGIN IMMEDIATE's.
        converted = _PARAM.sub(r"?\1", sql).replace(" FOR UPDATE", "")
        _SQLITE_SQL[sql] = converted
    return converted


class Backend:
    sqlite: bool

    def read(self) -> Any:  # an async context manager yielding a Conn
        raise NotImplementedError

    def write(self) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class PostgresBackend(Backend):
    sqlite = False

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, url: str, pool_size: int, overflow: int) -> PostgresBackend:
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        # asyncpg keeps every connection it opens; max_size is the gateway's pool + overflow.
        pool = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size + overflow)
        return cls(pool)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Conn]:
        async with self.pool.acquire() as raw:
            yield Conn(raw, False)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Conn]:
        async with self.pool.acquire() as raw, raw.transaction():
            yield Conn(raw, False)

    async def close(self) -> None:
        await self.pool.close()


class SqliteBackend(Backend):
    """aiosqlite connections (one thread each) in a small pool, set up like gateway.db's."""

    sqlite = True

    def __init__(self, path: str, max_connections: int) -> None:
        self.path = path
        self.max_connections = max_connections
        self.idle: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self.opened = 0

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(
            self.path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None
        )
        conn.row_factory = sqlite3.Row
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA foreign_keys=ON",
            f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        ):
            await conn.execute(pragma)
        return conn

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[aiosqlite.Connection]:
        if self.idle.empty() and self.opened < self.max_connections:
            self.opened += 1
            conn = await self._connect()
        else:
            conn = await self.idle.get()
        try:
            yield conn
        finally:
            self.idle.put_nowait(conn)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Conn]:
        async with self._acquire() as raw:
            yield Conn(raw, True)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Conn]:
        async with self._acquire() as raw:
            await raw.execute("BEGIN IMMEDIATE")
            try:
                yield Conn(raw, True)
            except BaseException:
                await raw.execute("ROLLBACK")
                raise
            await raw.execute("COMMIT")

    async def close(self) -> None:
        while not self.idle.empty():
            await self.idle.get_nowait().close()


# --- the endpoints ----------------------------------------------------------------------------


def reply(body: dict[str, Any], conn: Conn | int, status: int = 200) -> Response:
    count = conn if isinstance(conn, int) else conn.count
    return JSONResponse(body, status, headers={"x-bench-statements": str(count)})


async def available(conn: Conn, user_id: int, balance: int, next_expiry: Any, now: datetime) -> int:
    """The balance as the gateway shows it: the row's, unless a grant expired since."""
    expiry = as_time(next_expiry)
    if expiry is None or expiry > now:
        return balance
    total = await conn.fetchval(
        "SELECT COALESCE(SUM(remaining), 0) FROM credit_grants"
        " WHERE user_id = $1 AND remaining > 0 AND (expires_at IS NULL OR expires_at > $2)",
        user_id,
        now,
    )
    return int(total)


async def viewer(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    user_id = int((await request.json())["userId"])
    now = datetime.now(UTC)
    async with backend.read() as conn:
        row = await conn.fetchrow(
            "SELECT tier, credits_available, credits_next_expiry FROM users WHERE id = $1", user_id
        )
        if row is None:
            return reply({"data": {"viewer": None}}, conn)
        credits = await available(conn, user_id, row[1], row[2], now)
    return reply({"data": {"viewer": {"tier": row[0], "credits": {"available": credits}}}}, conn)


async def consume(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    body = await request.json()
    user_id, amount = int(body["userId"]), int(body["amount"])
    reason, key = str(body.get("reason") or "ai usage"), body.get("idempotencyKey")
    now = datetime.now(UTC)
    digest = fingerprint("consume", user=user_id, amount=amount, reason=reason)
    async with backend.write() as conn:
        # Lock the user row first, as every ledger change in the gateway does.
        user = await conn.fetchrow(
            "SELECT id, email, credits_available, credits_next_expiry, allowance_period_start"
            " FROM users WHERE id = $1 FOR UPDATE",
            user_id,
        )
        if user is None:
            return reply(_result("UserNotFound", message=f"No user {user_id}"), conn)
        if key is not None:
            keyed = await conn.fetchrow(
                "SELECT fingerprint, amount, balance_after FROM credit_events"
                " WHERE idempotency_key = $1",
                key,
            )
            if keyed is not None:
                if keyed[0] != digest:
                    return reply(_result("IdempotencyConflict", idempotencyKey=key), conn)
                event = {"amount": keyed[1], "balanceAfter": keyed[2]}
                return reply(_result("CreditChange", replayed=True, event=event), conn)
        next_expiry = as_time(user[3])
        if next_expiry is not None and next_expiry <= now:
            raise NotInDataSet("a grant expired during the run; the baseline does not expire")
        balance = int(user[2])
        if balance < amount:
            return reply(_result("InsufficientCredits", available=balance), conn)
        grants = await conn.fetch(
            "SELECT id, remaining, expires_at FROM credit_grants"
            " WHERE user_id = $1 AND remaining > 0"
            " ORDER BY expires_at ASC NULLS LAST, is_purchased, created_at, id",
            user_id,
        )
        allocations: list[list[int]] = []
        left, drained_soonest = amount, False
        for grant in grants:
            take = min(left, grant[1])
            await conn.execute(
                "UPDATE credit_grants SET remaining = $2 WHERE id = $1", grant[0], grant[1] - take
            )
            allocations.append([grant[0], take])
            drained_soonest |= grant[1] == take and as_time(grant[2]) == next_expiry
            left -= take
            if left == 0:
                break
        if left:
            raise RuntimeError(f"user {user_id}: balance exceeds its grants")
        if drained_soonest and next_expiry is not None:
            next_expiry = as_time(
                await conn.fetchval(
                    "SELECT MIN(expires_at) FROM credit_grants"
                    " WHERE user_id = $1 AND remaining > 0 AND expires_at > $2",
                    user_id,
                    now,
                )
            )
        balance -= amount
        await conn.execute(
            "UPDATE users SET credits_available = $2, credits_next_expiry = $3, updated_at = $4"
            " WHERE id = $1",
            user_id,
            balance,
            next_expiry,
            now,
        )
        await conn.execute(
            "INSERT INTO credit_events (user_id, kind, amount, balance_after, reason, source,"
            " actor, request_id, idempotency_key, fingerprint, allocations, created_at)"
            " VALUES ($1, 'consume', $2, $3, $4, 'usage', 'baseline', $5, $6, $7, $8, $9)",
            user_id,
            -amount,
            balance,
            reason,
            uuid.uuid4().hex,
            key,
            digest,
            json.dumps(allocations, separators=(",", ":")),
            now,
        )
    event = {"amount": -amount, "balanceAfter": balance}
    return reply(_result("CreditChange", replayed=False, event=event), conn)


def _result(typename: str, **fields: Any) -> dict[str, Any]:
    return {"data": {"consumeCredits": {"__typename": typename, **fields}}}


async def support(request: Request) -> Response:
    """The support page: users(first: 100) with balances, last 5 events, last 3 payments."""
    backend: Backend = request.app.state.backend
    first = int((await request.json()).get("first", 100))
    now = datetime.now(UTC)
    # One extra row per list, as the gateway fetches to tell whether a next page exists.
    async with backend.read() as conn:
        users = await conn.fetch(
            "SELECT id, email, credits_available, credits_next_expiry FROM users"
            " ORDER BY id LIMIT $1",
            first + 1,
        )
        users = users[:first]
        ids = [u[0] for u in users]
        events = await _newest(conn, "credit_events", "amount", ids, 5 + 1)
        payments = await _newest(conn, "payments", "amount", ids, 3 + 1)
        edges = []
        for user in users:
            uid = user[0]
            edges.append(
                {
                    "node": {
                        "email": user[1],
                        "credits": {"available": await available(conn, uid, user[2], user[3], now)},
                        "creditEvents": {
                            "edges": [{"node": {"amount": a}} for a in events.get(uid, [])[:5]]
                        },
                        "payments": {
                            "edges": [{"node": {"amount": a}} for a in payments.get(uid, [])[:3]]
                        },
                    }
                }
            )
    return reply({"data": {"users": {"edges": edges}}}, conn)


async def _newest(
    conn: Conn, table: str, column: str, user_ids: list[int], limit: int
) -> dict[int, list[int]]:
    """Each user's newest `limit` rows in one statement (the gateway's dataloader query)."""
    if not user_ids:
        return {}
    condition, args = conn.in_list(2, user_ids)
    rows = await conn.fetch(
        f"SELECT user_id, {column} FROM (SELECT user_id, id, {column}, row_number()"
        f" OVER (PARTITION BY user_id ORDER BY id DESC) AS rank FROM {table}"
        f" WHERE user_id {condition}) AS ranked WHERE rank <= $1 ORDER BY user_id, id DESC",
        limit,
        *args,
    )
    grouped: dict[int, list[int]] = {}
    for row in rows:
        grouped.setdefault(row[0], []).append(row[1])
    return grouped


async def metrics(request: Request) -> Response:
    """collect_entitlement_metrics' three aggregate statements."""
    backend: Backend = request.app.state.backend
    catalog: Catalog = request.app.state.catalog
    days = int((await request.json()).get("days", 7))
    now = datetime.now(UTC)
    since, horizon = now - timedelta(days=days), now + timedelta(days=days)
    async with backend.read() as conn:
        tiers = await conn.fetch(
            "SELECT tier, COUNT(*), COALESCE(SUM(CASE WHEN trial_ends_at > $1"
            " AND trial_ends_at <= $2 THEN 1 ELSE 0 END), 0) FROM users GROUP BY tier",
            now,
            horizon,
        )
        unpaid = ", ".join(f"'{s}'" for s in UNPAID_STATUSES)
        money = await conn.fetch(
            "SELECT currency, COUNT(*), COALESCE(SUM(amount), 0),"
            " COALESCE(SUM(CASE WHEN amount_refunded > 0 THEN 1 ELSE 0 END), 0),"
            " COALESCE(SUM(amount_refunded), 0),"
            " COALESCE(SUM(CASE WHEN status = 'disputed' THEN 1 ELSE 0 END), 0),"
            " COALESCE(SUM(CASE WHEN kind = 'credit_pack' THEN 1 ELSE 0 END), 0),"
            " COALESCE(SUM(CASE WHEN kind = 'subscription' THEN 1 ELSE 0 END), 0)"
            " FROM payments WHERE created_at > $1 AND created_at <= $2"
            f" AND status NOT IN ({unpaid})"
            " GROUP BY currency ORDER BY currency",
            since,
            now,
        )
        ledger = await conn.fetchrow(
            "SELECT COALESCE(SUM(CASE WHEN kind = 'grant' THEN amount ELSE 0 END), 0),"
            " COALESCE(SUM(CASE WHEN kind = 'consume' THEN -amount ELSE 0 END), 0),"
            " COALESCE(SUM(CASE WHEN kind = 'expire' THEN -amount ELSE 0 END), 0),"
            " COALESCE(SUM(CASE WHEN kind = 'revoke' THEN -amount ELSE 0 END), 0)"
            " FROM credit_events WHERE created_at > $1 AND created_at <= $2",
            since,
            now,
        )
    counts = {row[0]: int(row[1]) for row in tiers}
    codes = [*catalog.tier_codes, *sorted(set(counts) - set(catalog.tier_codes))]
    body = {
        "days": days,
        "since": since.isoformat(),
        "until": now.isoformat(),
        "users": {
            "total": sum(counts.values()),
            "plans": [{"tier": c, "count": counts.get(c, 0)} for c in codes],
            "trialsExpiring": sum(int(row[2]) for row in tiers),
        },
        "payments": {
            "count": sum(int(r[1]) for r in money),
            "grossByCurrency": [{"currency": r[0], "amount": int(r[2])} for r in money],
            "refunds": sum(int(r[3]) for r in money),
            "refundedByCurrency": [
                {"currency": r[0], "amount": int(r[4])} for r in money if int(r[4])
            ],
            "disputes": sum(int(r[5]) for r in money),
            "creditPacks": sum(int(r[6]) for r in money),
            "subscriptions": sum(int(r[7]) for r in money),
        },
        "credits": dict(
            zip(("granted", "consumed", "expired", "revoked"), map(int, ledger), strict=True)
        ),
    }
    return reply({"data": {"metrics": body}}, conn)


def verify_signature(payload: bytes, header: str, secrets: Sequence[str], now: float) -> bool:
    """Stripe's scheme: `t=…,v1=…`, HMAC-SHA256 of f"{t}.{payload}", five minutes' tolerance."""
    parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
    stamps = [v for k, v in parts if k == "t"]
    signatures = [v for k, v in parts if k == "v1"]
    if not stamps or not signatures or not stamps[0].isdigit():
        return False
    if abs(now - int(stamps[0])) > WEBHOOK_TOLERANCE_S:
        return False
    signed = stamps[0].encode() + b"." + payload
    for secret in secrets:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(expected, s) for s in signatures):
            return True
    return False


async def webhook(request: Request) -> Response:
    """invoice.paid: store the event, record the payment, grant the period's credits."""
    backend: Backend = request.app.state.backend
    catalog: Catalog = request.app.state.catalog
    payload = await request.body()
    header = request.headers.get("stripe-signature", "")
    if not verify_signature(payload, header, request.app.state.webhook_secrets, time.time()):
        return reply({"error": "bad signature"}, 0, 400)
    event = json.loads(payload)
    invoice = event["data"]["object"]
    user_id = int(invoice["subscription_details"]["metadata"]["user_id"])
    line = invoice["lines"]["data"][0]
    tier = catalog.tier_for_price(line["price"]["id"])
    if tier is None:
        return reply({"error": "no tier for the invoice's price"}, 0, 422)
    now = datetime.now(UTC)
    period_end = datetime.fromtimestamp(line["period"]["end"], UTC)
    credits = tier.monthly_credits if period_end > now else 0
    invoice_id = invoice["id"]
    async with backend.write() as conn:
        # Insert-before-effects makes a concurrent redelivery wait on the primary key.
        stored = await conn.fetchrow(
            "SELECT status FROM stripe_events WHERE id = $1 FOR UPDATE", event["id"]
        )
        if stored is not None:
            return reply({"received": True, "status": stored[0], "duplicate": True}, conn)
        await conn.execute(
            "INSERT INTO stripe_events (id, type, created, livemode, payload, status, attempts,"
            " request_id, stripe_customer_id, stripe_object_id, received_at)"
            " VALUES ($1, $2, $3, $4, $5, 'received', 0, $6, $7, $8, $9)",
            event["id"],
            event["type"],
            datetime.fromtimestamp(event["created"], UTC),
            bool(event.get("livemode", False)),
            payload.decode(),
            uuid.uuid4().hex,
            invoice.get("customer"),
            invoice_id,
            now,
        )
        user = await conn.fetchrow(
            "SELECT id, credits_available, credits_next_expiry FROM users WHERE id = $1 FOR UPDATE",
            user_id,
        )
        if user is None:
            return reply({"error": f"no user {user_id}"}, conn, 500)
        if await conn.fetchval("SELECT id FROM payments WHERE stripe_object_id = $1", invoice_id):
            return reply({"received": True, "status": "processed", "duplicate": True}, conn)
        payment_id = await conn.fetchval(
            "INSERT INTO payments (user_id, kind, stripe_object_id, stripe_invoice_id,"
            " stripe_payment_intent_id, stripe_charge_id, tier_code, amount, currency, status,"
            " amount_refunded, credits_granted, credits_revoked, credits_unrecovered, created_at)"
            " VALUES ($1, 'subscription', $2, $2, $3, $4, $5, $6, $7, 'paid', 0, $8, 0, 0, $9)"
            " RETURNING id",
            user_id,
            invoice_id,
            invoice.get("payment_intent"),
            invoice.get("charge"),
            tier.code,
            int(invoice.get("amount_paid") or 0),
            str(invoice.get("currency") or "eur").upper(),
            credits,
            now,
        )
        balance = int(user[1])
        if credits:
            key = f"stripe:invoice:{invoice_id}"
            if await conn.fetchval("SELECT id FROM credit_events WHERE idempotency_key = $1", key):
                return reply({"received": True, "status": "processed", "duplicate": True}, conn)
            reason = f"{tier.code} plan allowance (invoice {invoice_id})"
            grant_id = await conn.fetchval(
                "INSERT INTO credit_grants (user_id, amount, remaining, expires_at, source,"
                " is_purchased, reason, payment_id, created_at)"
                " VALUES ($1, $2, $2, $3, 'stripe', $4, $5, $6, $7) RETURNING id",
                user_id,
                credits,
                period_end,
                False,
                reason,
                payment_id,
                now,
            )
            balance += credits
            digest = fingerprint(
                "grant",
                user=user_id,
                amount=credits,
                reason=reason,
                expires_at=period_end,
                payment_id=payment_id,
            )
            await conn.execute(
                "INSERT INTO credit_events (user_id, kind, amount, balance_after, reason, source,"
                " actor, request_id, idempotency_key, fingerprint, grant_id, payment_id,"
                " created_at) VALUES ($1, 'grant', $2, $3, $4, 'stripe', $5, $6, $7, $8, $9, $10,"
                " $11)",
                user_id,
                credits,
                balance,
                reason,
                f"stripe:{event['id']}",
                uuid.uuid4().hex,
                key,
                digest,
                grant_id,
                payment_id,
                now,
            )
            next_expiry = as_time(user[2])
            if next_expiry is None or period_end < next_expiry:
                next_expiry = period_end
            await conn.execute(
                "UPDATE users SET credits_available = $2, credits_next_expiry = $3,"
                " updated_at = $4 WHERE id = $1",
                user_id,
                balance,
                next_expiry,
                now,
            )
        await conn.execute(
            "UPDATE stripe_events SET status = 'processed', attempts = 1, processed_at = $2"
            " WHERE id = $1",
            event["id"],
            now,
        )
    return reply({"received": True, "status": "processed"}, conn)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def not_in_data_set(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": str(exc)}, 500)


def create_app() -> Starlette:
    """uvicorn's factory (`--factory`): the backend opens in the lifespan, in the worker."""
    url = os.environ["BASELINE_DATABASE_URL"]
    sqlite = url.startswith("sqlite")
    pool_size = int(os.environ.get("BASELINE_POOL_SIZE", "5" if sqlite else "10"))
    overflow = int(os.environ.get("BASELINE_MAX_OVERFLOW", "10"))
    secrets = tuple(
        s.strip() for s in os.environ.get("STRIPE_WEBHOOK_SECRET", "").split(",") if s.strip()
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if sqlite:
            backend: Backend = SqliteBackend(url.split(":///", 1)[1], pool_size + overflow)
        else:
            backend = await PostgresBackend.open(url, pool_size, overflow)
        app.state.backend = backend
        try:
            yield
        finally:
            await backend.close()

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/viewer", viewer, methods=["POST"]),
            Route("/consume", consume, methods=["POST"]),
            Route("/support", support, methods=["POST"]),
            Route("/metrics", metrics, methods=["POST"]),
            Route("/webhook", webhook, methods=["POST"]),
        ],
        exception_handlers={NotInDataSet: not_in_data_set},
        lifespan=lifespan,
    )
    app.state.catalog = load_catalog(DEFAULT_CATALOG)
    app.state.webhook_secrets = secrets
    return app

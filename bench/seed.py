"""A realistic data set, generated once per run and bulk-loaded into PostgreSQL and SQLite.

Every user's history is simulated in time order (grants from payments and monthly allowances,
AI spends that burn grants in the gateway's order, expiries at month ends), so the ledger
invariants hold exactly as the gateway would have left them:
users.credits_available == sum(credit_grants.remaining) == sum(credit_events.amount), never
negative, expired grants at zero. allowance_period_start is this month's start for everyone, so
reads never turn into allowance writes during the benchmark.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import jwt

from gateway.db import Database
from resolvers import keys
from resolvers.catalog.model import Catalog
from resolvers.entitlements.periods import period_key
from resolvers.ledger.allowances import allowance_period
from resolvers.ledger.credits import fingerprint

USER_COLUMNS = (
    "id",
    "email",
    "external_id",
    "locale",
    "tier",
    "trial_ends_at",
    "stripe_customer_id",
    "stripe_subscription_id",
    "subscription_status",
    "subscription_price_id",
    "subscription_period_end",
    "subscription_event_at",
    "credits_available",
    "credits_next_expiry",
    "allowance_period_start",
    "created_at",
    "updated_at",
)
PAYMENT_COLUMNS = (
    "id",
    "user_id",
    "kind",
    "stripe_object_id",
    "stripe_payment_intent_id",
    "stripe_charge_id",
    "stripe_invoice_id",
    "pack_code",
    "tier_code",
    "amount",
    "currency",
    "status",
    "amount_refunded",
    "credits_granted",
    "credits_revoked",
    "credits_unrecovered",
    "created_at",
)
GRANT_COLUMNS = (
    "id",
    "user_id",
    "amount",
    "remaining",
    "expires_at",
    "source",
    "is_purchased",
    "reason",
    "payment_id",
    "created_at",
)
EVENT_COLUMNS = (
    "id",
    "user_id",
    "kind",
    "amount",
    "balance_after",
    "reason",
    "source",
    "actor",
    "request_id",
    "idempotency_key",
    "fingerprint",
    "grant_id",
    "payment_id",
    "allocations",
    "created_at",
)
# Column positions used while building rows (tuples are what COPY and executemany want).
_U_CREDITS, _U_NEXT_EXPIRY = 12, 13
_JSON_COLUMNS = {"allocations"}
_BOOL_COLUMNS = {"is_purchased"}
# Enough for every user to be picked many times by a consumption run without running dry.
MIN_FINAL_BALANCE = 500
EMAIL_DOMAIN = "bench.example"
EXPIRY_MARGIN = timedelta(days=2)
TIER_WEIGHTS = {"free": 0.70, "pro": 0.22, "team": 0.08}


@dataclass(frozen=True)
class Sizes:
    users: int
    events: int
    payments: int


@dataclass
class Dataset:
    now: datetime
    users: list[tuple[Any, ...]] = field(default_factory=list)
    payments: list[tuple[Any, ...]] = field(default_factory=list)
    grants: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    usage: list[tuple[Any, ...]] = field(default_factory=list)
    # Users with a live Stripe subscription: what invoice.paid webhooks are about.
    subscribers: list[int] = field(default_factory=list)
    tiers: dict[int, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {
            "users": len(self.users),
            "credit_events": len(self.events),
            "credit_grants": len(self.grants),
            "payments": len(self.payments),
            "usage_events": len(self.usage),
            "subscribers": len(self.subscribers),
        }


@dataclass
class _Grant:
    id: int
    amount: int
    remaining: int
    expires_at: datetime | None
    is_purchased: bool
    created_at: datetime
    row: list[Any]


def _event_budget(rng: random.Random, users: int, events: int) -> list[int]:
    """Events per user: skewed like real usage (a few heavy users), summing to `events`."""
    weights = [rng.lognormvariate(0.0, 0.9) for _ in range(users)]
    total = sum(weights)
    raw = [w * events / total for w in weights]
    budget = [int(r) for r in raw]
    # Largest remainders get the leftover events, so the sum is exact.
    order = sorted(range(users), key=lambda i: raw[i] - budget[i], reverse=True)
    for i in order[: events - sum(budget)]:
        budget[i] += 1
    return budget


def generate(
    sizes: Sizes, catalog: Catalog, *, seed: int = 6, now: datetime | None = None
) -> Dataset:
    """The whole data set in memory (a few hundred MB at the default sizes)."""
    rng = random.Random(seed)
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    month_start, month_end = allowance_period(now)
    data = Dataset(now=now)
    tiers = {t.code: t for t in catalog.tiers}
    tier_codes = [c for c in TIER_WEIGHTS if c in tiers] or list(tiers)
    tier_weights = [TIER_WEIGHTS.get(c, 1.0) for c in tier_codes]
    packs = list(catalog.credit_packs)
    locales = list(catalog.locales) or ["en"]
    currencies = list(catalog.currencies) or ["EUR"]

    # Users first (their tiers decide who gets invoices), then payments, then each ledger.
    user_meta: list[dict[str, Any]] = []
    for uid in range(1, sizes.users + 1):
        tier = rng.choices(tier_codes, tier_weights)[0]
        created = now - timedelta(days=rng.uniform(20, 400), seconds=rng.randrange(86_400))
        subscribed = tiers[tier].monthly_credits > 0 and tier != tier_codes[0]
        currency = rng.choice(currencies)
        meta = {
            "id": uid,
            "tier": tier,
            "created": created,
            "subscribed": subscribed,
            "currency": currency,
            "payments": [],
            "trialing": subscribed and rng.random() < 0.1,
        }
        user_meta.append(meta)
        data.tiers[uid] = tier
        if subscribed:
            data.subscribers.append(uid)

    for payment_id in range(1, sizes.payments + 1):
        subscription = bool(data.subscribers) and rng.random() < 0.65
        owner = (
            user_meta[rng.choice(data.subscribers) - 1]
            if subscription
            else user_meta[rng.randrange(sizes.users)]
        )
        age = (now - owner["created"]).total_seconds()
        created = now - timedelta(seconds=rng.uniform(60, max(age, 120)))
        currency = owner["currency"]
        roll = rng.random()
        status = "failed" if roll < 0.02 else "refunded" if roll < 0.04 else "paid"
        if subscription:
            tier = tiers[owner["tier"]]
            kind, pack_code, tier_code = "subscription", None, tier.code
            amount, credits = tier.prices.get(currency, 0), tier.monthly_credits
            object_id = f"in_seed_{payment_id}"
            invoice_id: str | None = object_id
            expires: datetime | None = created + timedelta(days=30)
            if now < expires <= now + EXPIRY_MARGIN:
                # Nothing may expire while the benchmark runs: reads would turn into writes.
                created -= EXPIRY_MARGIN
                expires -= EXPIRY_MARGIN
        else:
            pack = rng.choice(packs)
            kind, pack_code, tier_code = "credit_pack", pack.code, None
            amount, credits = pack.prices.get(currency, 0), pack.credits
            object_id = f"cs_seed_{payment_id}"
            invoice_id, expires = None, None
        granted = 0 if status == "failed" else credits
        data.payments.append(
            (
                payment_id,
                owner["id"],
                kind,
                object_id,
                f"pi_seed_{payment_id}",
                f"ch_seed_{payment_id}",
                invoice_id,
                pack_code,
                tier_code,
                amount,
                currency,
                status,
                amount if status == "refunded" else 0,
                granted,
                0,
                # A refund after the credits were spent: nothing left to take back.
                granted if status == "refunded" else 0,
                created,
            )
        )
        if granted:
            owner["payments"].append((created, payment_id, granted, expires, kind, object_id))

    budget = _event_budget(rng, sizes.users, sizes.events)
    ids = {"grant": 0, "event": 0}
    carry = 0  # events a user's history came out short (or over) by, asked of the next one
    for meta, target in zip(user_meta, budget, strict=True):
        before = ids["event"]
        _simulate_user(data, meta, target + carry, rng, now, month_start, month_end, tiers, ids)
        carry += target - (ids["event"] - before)
        uid = meta["id"]
        customer = f"cus_seed_{uid}" if meta["subscribed"] or meta["payments"] else None
        tier = meta["tier"]
        subscribed = meta["subscribed"]
        price = tiers[tier].stripe_price_ids.get(meta["currency"]) if subscribed else None
        period_end = now + timedelta(days=rng.uniform(1, 30)) if subscribed else None
        trial_end = now + timedelta(days=rng.uniform(0.5, 13)) if meta["trialing"] else None
        balance, next_expiry = meta["balance"], meta["next_expiry"]
        data.users.append(
            (
                uid,
                f"user{uid}@{EMAIL_DOMAIN}",
                f"ext-{uid}",
                rng.choice(locales),
                tier,
                trial_end,
                customer,
                f"sub_seed_{uid}" if subscribed else None,
                ("trialing" if meta["trialing"] else "active") if subscribed else None,
                price,
                period_end,
                now - timedelta(days=1) if subscribed else None,
                balance,
                next_expiry,
                month_start,
                meta["created"],
                meta["last_change"],
            )
        )
    _usage_history(data, rng, month_start)
    return data


USAGE_HISTORY_MONTHS = 3
USAGE_COLUMNS = (
    "id",
    "user_id",
    "feature",
    "period",
    "quantity",
    "used_after",
    "source",
    "actor",
    "idempotency_key",
    "created_at",
)


def _usage_history(data: Dataset, rng: random.Random, month_start: datetime) -> None:
    """PDF exports counted in the months before this one, a few per user, each with its key.

    A live database has a usage record; without one `usage_events` is analysed empty, and the
    idempotency lookups planned then (`spend_credits`' EXISTS among them) keep scanning it as
    the usage scenario fills it: consume measured after a usage run fell to a quarter.
    This month stays unused, so the usage scenario's limits start where they always did.
    """
    start = month_start
    for _ in range(USAGE_HISTORY_MONTHS):
        start = _previous_month(start)
        period = period_key(start)
        for uid in range(1, len(data.users) + 1):
            for used in range(1, rng.randint(1, 4) + 1):
                n = len(data.usage) + 1
                created = start + timedelta(days=rng.uniform(0, 27))
                key = f"seed-usage-{n}"
                row = (n, uid, "pdf_exports", period, 1, used, "api", "seed", key, created)
                data.usage.append(row)


def _simulate_user(
    data: Dataset,
    meta: dict[str, Any],
    target: int,
    rng: random.Random,
    now: datetime,
    month_start: datetime,
    month_end: datetime,
    tiers: dict[str, Any],
    ids: dict[str, int],
) -> None:
    """Replay one user's history in time order, appending grants and events to `data`."""
    uid, created = meta["id"], meta["created"]
    tier = tiers[meta["tier"]]
    # (time, order, kind, payload): grants before spends at the same instant.
    ops: list[tuple[datetime, int, str, Any]] = []
    for created_at, pid, credits, expires, kind, object_id in meta["payments"]:
        ops.append((created_at, 0, "payment", (pid, credits, expires, kind, object_id)))
    if not meta["subscribed"] and tier.monthly_credits > 0:
        # Monthly allowances of the last few months; the current month's always.
        start = month_start
        for _ in range(4):
            end = month_end if start == month_start else _next_month(start)
            if end <= created:
                break
            ops.append((max(start, created), 0, "allowance", (start, end)))
            start = _previous_month(start)
    # The sign-up grant below, the planned grants and roughly one expiry per three of them.
    grants_planned = len(ops) + 1
    spends = max(0, target - grants_planned - grants_planned // 3)
    spent = 0
    for _ in range(spends):
        at = created + (now - created) * rng.random()
        amount = rng.choice((1, 1, 2, 3, 5, 8, 13, 20))
        spent += amount
        ops.append((at, 1, "spend", amount))
    # Sign-up credits (never expiring) cover every planned spend: none is skipped for want of
    # credits, so the event count stays what was asked for.
    ops.append((created, -1, "signup", max(spent, 1)))
    ops.sort(key=lambda op: (op[0], op[1]))

    grants: list[_Grant] = []
    balance = 0
    last_change = created

    def event(
        kind: str,
        amount: int,
        at: datetime,
        reason: str,
        source: str,
        actor: str,
        *,
        key: str | None = None,
        digest: str | None = None,
        grant_id: int | None = None,
        payment_id: int | None = None,
        allocations: str | None = None,
    ) -> None:
        ids["event"] += 1
        data.events.append(
            (
                ids["event"],
                uid,
                kind,
                amount,
                balance,
                reason,
                source,
                actor,
                f"seed-{ids['event']}",
                key,
                digest,
                grant_id,
                payment_id,
                allocations,
                at,
            )
        )

    def add_grant(
        amount: int,
        at: datetime,
        expires: datetime | None,
        source: str,
        purchased: bool,
        reason: str,
        actor: str,
        *,
        payment_id: int | None = None,
        key: str | None = None,
        digest: str | None = None,
    ) -> None:
        nonlocal balance, last_change
        ids["grant"] += 1
        row = [
            ids["grant"],
            uid,
            amount,
            amount,
            expires,
            source,
            purchased,
            reason,
            payment_id,
            at,
        ]
        grants.append(_Grant(ids["grant"], amount, amount, expires, purchased, at, row))
        balance += amount
        last_change = at
        event(
            "grant",
            amount,
            at,
            reason,
            source,
            actor,
            key=key,
            digest=digest,
            grant_id=ids["grant"],
            payment_id=payment_id,
        )

    def expire_until(moment: datetime) -> None:
        nonlocal balance, last_change
        due = [g for g in grants if g.remaining > 0 and g.expires_at and g.expires_at <= moment]
        for grant in sorted(due, key=lambda g: (g.expires_at, g.id)):
            assert grant.expires_at is not None
            lost = grant.remaining
            grant.remaining = 0
            balance -= lost
            last_change = grant.expires_at
            event(
                "expire",
                -lost,
                grant.expires_at,
                "grant expired",
                "system",
                "system",
                grant_id=grant.id,
            )

    for at, _, kind, payload in ops:
        expire_until(at)
        if kind == "payment":
            pid, credits, expires, pkind, object_id = payload
            if expires is not None and expires <= at:
                continue
            if pkind == "subscription":
                reason = f"{tier.code} plan allowance (invoice {object_id})"
                key = f"stripe:invoice:{object_id}"
            else:
                reason = f"credit pack bought (checkout {object_id})"
                key = f"stripe:checkout:{object_id}"
            digest = fingerprint(
                "grant", user=uid, amount=credits, reason=reason, expires_at=expires, payment_id=pid
            )
            add_grant(
                credits,
                at,
                expires,
                "stripe",
                pkind == "credit_pack",
                reason,
                f"stripe:evt_seed_{pid}",
                payment_id=pid,
                key=key,
                digest=digest,
            )
        elif kind == "signup":
            add_grant(payload, at, None, "support", False, "sign-up credits", "key:support")
        elif kind == "allowance":
            start, end = payload
            key = f"allowance:{uid}:{tier.code}:{start:%Y-%m}"
            digest = fingerprint("allowance", user=uid, tier=tier.code, period=start)
            add_grant(
                tier.monthly_credits,
                at,
                end,
                "plan_allowance",
                False,
                f"{tier.code} plan allowance {start:%Y-%m}",
                "system",
                key=key,
                digest=digest,
            )
        else:
            amount = min(payload, balance)
            if amount <= 0:
                continue
            live = [g for g in grants if g.remaining > 0]
            live.sort(key=_burn_order)
            left, allocations = amount, []
            for grant in live:
                take = min(left, grant.remaining)
                grant.remaining -= take
                allocations.append([grant.id, take])
                left -= take
                if left == 0:
                    break
            balance -= amount
            last_change = at
            # The AI backend keys every spend; a cheap digest is enough, these keys never recur.
            event(
                "consume",
                -amount,
                at,
                "ai usage",
                "usage",
                "key:ai-backend",
                key=f"seed-usage-{ids['event'] + 1}",
                digest=hashlib.sha256(f"seed:{ids['event'] + 1}".encode()).hexdigest(),
                allocations=json.dumps(allocations, separators=(",", ":")),
            )
    expire_until(now)
    if balance < MIN_FINAL_BALANCE:
        add_grant(
            MIN_FINAL_BALANCE,
            now - timedelta(hours=1),
            None,
            "support",
            False,
            "support gift",
            "key:support",
        )
    for grant in grants:
        grant.row[3] = grant.remaining
        data.grants.append(tuple(grant.row))
    future = [
        g.expires_at for g in grants if g.remaining > 0 and g.expires_at and g.expires_at > now
    ]
    meta["balance"] = balance
    meta["next_expiry"] = min(future) if future else None
    meta["last_change"] = max(last_change, created)


def _burn_order(grant: _Grant) -> tuple[Any, ...]:
    # The gateway's: soonest expiry first (none last), free before purchased, oldest, id.
    far = datetime.max.replace(tzinfo=UTC)
    return (grant.expires_at or far, grant.is_purchased, grant.created_at, grant.id)


def _next_month(start: datetime) -> datetime:
    return allowance_period(start)[1]


def _previous_month(start: datetime) -> datetime:
    return allowance_period(start - timedelta(days=1))[0]


# --- loading -------------------------------------------------------------------------------


async def load_postgres(dsn: str, data: Dataset) -> float:
    """COPY every table (binary protocol, one round trip per table); seconds taken."""
    started = time.perf_counter()
    # Bounded: COPY of the default data set takes seconds; ten minutes means something is stuck.
    conn = await asyncpg.connect(dsn, timeout=30, command_timeout=600)
    try:
        async with conn.transaction():
            for table, columns, rows in _tables(data):
                await conn.copy_records_to_table(table, records=rows, columns=list(columns))
            for table in ("users", "payments", "credit_grants", "credit_events", "usage_events"):
                # Explicit ids were copied: move each sequence past them for later inserts.
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                    f" (SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
                )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


def load_sqlite(path: Path, data: Dataset) -> float:
    """executemany per table in one transaction, as SQLAlchemy would store the values."""
    started = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # Nothing to lose while seeding a throw-away file: skip the fsyncs.
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN IMMEDIATE")
        for table, columns, rows in _tables(data):
            converters = [_sqlite_converter(c) for c in columns]
            marks = ", ".join("?" for _ in columns)
            conn.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                (tuple(f(v) for f, v in zip(converters, row, strict=True)) for row in rows),
            )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - started


def _tables(data: Dataset) -> Iterable[tuple[str, Sequence[str], list[tuple[Any, ...]]]]:
    # Foreign-key order: users, payments, grants (reference payments), events (reference both).
    yield "users", USER_COLUMNS, data.users
    yield "payments", PAYMENT_COLUMNS, data.payments
    yield "credit_grants", GRANT_COLUMNS, data.grants
    yield "credit_events", EVENT_COLUMNS, data.events
    yield "usage_events", USAGE_COLUMNS, data.usage


def sqlite_time(value: datetime) -> str:
    """SQLAlchemy's SQLite storage format for UTC times (naive, always with microseconds)."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _sqlite_converter(column: str) -> Any:
    def convert(value: Any) -> Any:
        if isinstance(value, datetime):
            return sqlite_time(value)
        if isinstance(value, bool):
            return int(value)
        return value

    return convert


# --- credentials ----------------------------------------------------------------------------


async def create_keys(database_url: str, now: datetime) -> dict[str, str]:
    """One API key per staff role, through the same resolver the CLI uses."""
    db = Database(database_url, pool_size=1)
    created: dict[str, str] = {}
    try:
        for role in ("service", "support", "dashboard"):

            async def work(session: Any, role: str = role) -> Any:
                return await keys.create_api_key(session, name=f"bench-{role}", role=role, now=now)

            result = await db.write(work)
            if not isinstance(result, keys.ApiKeyCreated):
                raise RuntimeError(f"creating the {role} key: {result.message}")
            created[role] = result.secret
    finally:
        await db.dispose()
    return created


def write_tokens(path: Path, users: int, secret: str, *, lifetime_s: int = 7200) -> None:
    """One end-user JWT per user, line N-1 for user N (wrk's Lua reads it by index)."""
    exp = int(time.time()) + lifetime_s
    with path.open("w") as out:
        for uid in range(1, users + 1):
            token = jwt.encode({"sub": str(uid), "exp": exp}, secret, algorithm="HS256")
            out.write(token + "\n")

"""Differential: the write paths' statements on the driver (resolvers.prepared) and on SQLAlchemy.

Each example sends one of the ledger's and the webhook's own statements, with random values,
both ways in one transaction on a seeded database (SQLite, PostgreSQL), each inside a savepoint
rolled back after it, and requires the same answer: the rows (keys, values and their Python
types) or the row count, or the same error class and SQLSTATE; and after a success, the same
contents of the table it wrote. Serial ids are reset before each side (PostgreSQL; SQLite gives
a rolled back id back), so both insert under the same id.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Select, bindparam, text, update
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db import Database
from resolvers import prepared
from resolvers.billing import deliveries, payments, purchase_analytics
from resolvers.ledger import accounts, entries, grants, held_credits, holds, idempotency, tiers
from resolvers.models import Base

pytestmark = pytest.mark.slow

EMAILS = ("a@example.com", "b@example.com", "c@example.com")
SERIAL_TABLES = (
    "users",
    "credit_grants",
    "credit_events",
    "payments",
    "credit_holds",
    "tier_changes",
    "analytics_events",
)
ZONES = (UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)))

times = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.sampled_from(ZONES)
)
# Now and then a naive time: UTCDateTime refuses it before anything is sent.
maybe_times = st.one_of(st.none(), times, times, st.datetimes())
small_ints = st.integers(min_value=-3, max_value=200)
# Past int32 and bigint too: asyncpg refuses them while encoding.
any_ints = st.one_of(small_ints, st.integers(min_value=-(2**64), max_value=2**64))
texts = st.text(max_size=12)  # NUL included: PostgreSQL refuses it in text
keys = st.one_of(
    st.none(), st.sampled_from(["key-seed", "tier-seed", "stripe:invoice:in_seed"]), texts
)
user_ids = st.integers(min_value=0, max_value=4)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=6)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
allocations = st.one_of(
    st.none(), st.lists(st.lists(st.integers(0, 5), min_size=2, max_size=2), max_size=3)
)


# The columns every keyed change records about itself (ledger events, tier changes).
CHANGE_RECORD: dict[str, st.SearchStrategy[Any]] = {
    "reason": texts,
    "source": st.just("support"),
    "actor": texts,
    "request_id": st.one_of(st.none(), texts),
    "idempotency_key": keys,
    "fingerprint": st.one_of(st.none(), texts),
}


def row_values(**columns: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Values for an INSERT: every column given, or some left to their defaults."""
    return st.fixed_dictionaries(
        {name: s for name, s in columns.items() if not name.startswith("_")},
        optional={name[1:]: s for name, s in columns.items() if name.startswith("_")},
    )


_USER_COLUMNS: dict[str, st.SearchStrategy[Any]] = {
    "credits_available": any_ints,
    "credits_held": small_ints,
    "tier": st.one_of(st.sampled_from(["free", "pro"]), texts),
    "email": st.one_of(st.sampled_from(EMAILS), texts),
    "stripe_customer_id": st.one_of(st.none(), texts),
    "credits_next_expiry": maybe_times,
    "allowance_period_start": maybe_times,
    "updated_at": times,
}


@st.composite
def account_updates(draw: st.DrawFn) -> tuple[Any, dict[str, Any]]:
    """An UPDATE of some user columns, built as save_account builds it."""
    names = draw(st.lists(st.sampled_from(sorted(_USER_COLUMNS)), min_size=1, unique=True))
    stmt = (
        update(accounts.USERS)
        .where(accounts.USERS.c.id == bindparam("account_id"))
        .values({name: bindparam(f"new_{name}") for name in names})
    )
    params = {f"new_{name}": draw(_USER_COLUMNS[name]) for name in names}
    return stmt, {"account_id": draw(user_ids), **params}


def case(stmt: Any, params: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    return params.map(lambda p: (stmt, p))


event_rows = row_values(
    id=st.one_of(st.just("evt_seed"), st.text(min_size=1, max_size=8)),
    type=st.sampled_from(["invoice.paid", "charge.refunded"]),
    created=times,
    _livemode=st.booleans(),
    payload=st.dictionaries(st.text(max_size=5), json_values, max_size=4),
    status=st.sampled_from(["processed", "failed"]),
    _attempts=small_ints,
    last_error=st.one_of(st.none(), texts),
    request_id=st.one_of(st.none(), texts),
    stripe_customer_id=st.one_of(st.none(), texts),
    stripe_object_id=st.one_of(st.none(), texts),
    received_at=times,
    processed_at=maybe_times,
)


def cases(dialect: str) -> st.SearchStrategy[Any]:
    """Every switched statement with its values; PostgreSQL's own (advisory locks) there only."""
    postgresql_only = (
        [
            case(
                deliveries._INSERT_NEW_LOCKING_KEY,
                event_rows.flatmap(
                    lambda row: st.builds(
                        lambda key: {**row, "scoped_key": key}, st.text(max_size=8)
                    )
                ),
            ),
            case(idempotency._LOCK_KEY, st.fixed_dictionaries({"scoped_key": texts})),
        ]
        if dialect == "postgresql"
        else []
    )
    return st.one_of(*postgresql_only, *_cases(dialect))


def _cases(dialect: str) -> list[st.SearchStrategy[Any]]:
    return [
        case(
            accounts._LOCK_BY_ID,
            st.fixed_dictionaries({"ref": user_ids, "idempotency_key": keys}),
        ),
        case(
            accounts._LOCK_BY_EMAIL,
            st.fixed_dictionaries(
                {"ref": st.one_of(st.sampled_from(EMAILS), texts), "idempotency_key": keys}
            ),
        ),
        account_updates(),
        case(
            grants._INSERT_GRANT,
            row_values(
                user_id=user_ids,
                amount=any_ints,
                remaining=small_ints,
                expires_at=maybe_times,
                source=st.sampled_from(["support", "stripe"]),
                _is_purchased=st.booleans(),
                reason=texts,
                payment_id=st.one_of(st.none(), st.integers(0, 2)),
                created_at=times,
            ),
        ),
        case(
            entries._INSERT_EVENT,
            row_values(
                user_id=user_ids,
                kind=st.sampled_from(["grant", "spend"]),
                amount=any_ints,
                balance_after=small_ints,
                **CHANGE_RECORD,
                grant_id=st.one_of(st.none(), st.integers(0, 3)),
                payment_id=st.one_of(st.none(), st.integers(0, 2)),
                allocations=allocations,
                created_at=times,
                hold_id=st.one_of(st.none(), st.integers(0, 2)),
            ),
        ),
        case(
            payments._INSERT_NEW_PAYMENT[dialect],
            row_values(
                user_id=user_ids,
                kind=st.sampled_from(["subscription", "credit_pack"]),
                stripe_object_id=st.one_of(st.just("in_seed"), texts),
                stripe_invoice_id=st.one_of(st.none(), texts),
                tier_code=st.one_of(st.none(), texts),
                amount=any_ints,
                currency=st.text(max_size=4),
                status=st.just("paid"),
                _amount_refunded=small_ints,
                _credits_granted=small_ints,
                created_at=times,
            ),
        ),
        case(deliveries._INSERT_NEW[dialect], event_rows),
        case(
            deliveries._SET_STATUS,
            st.fixed_dictionaries(
                {
                    "event_id": st.one_of(st.just("evt_seed"), texts),
                    "new_status": st.sampled_from(["ignored", "failed"]),
                    "new_error": st.one_of(st.none(), texts),
                }
            ),
        ),
        case(idempotency._FIND, st.fixed_dictionaries({"idempotency_key": keys})),
        case(entries._EVENT_BY_ID, st.fixed_dictionaries({"event_id": st.integers(0, 4)})),
        case(grants._SPENDABLE, st.fixed_dictionaries({"user_id": user_ids})),
        case(grants._EXPIRED, st.fixed_dictionaries({"user_id": user_ids, "now": times})),
        case(grants._NEXT_EXPIRY, st.fixed_dictionaries({"user_id": user_ids, "now": times})),
        case(held_credits._NEXT_HOLD_EXPIRY, st.fixed_dictionaries({"user_id": user_ids})),
        case(holds._HOLD_BY_ID, st.fixed_dictionaries({"hold_id": st.integers(0, 3)})),
        case(
            holds._INSERT_HOLD,
            row_values(
                user_id=user_ids,
                amount=any_ints,
                reason=texts,
                status=st.sampled_from(["active", "settled"]),
                allocations=allocations.filter(lambda a: a is not None),
                settled_amount=st.one_of(st.none(), small_ints),
                expires_at=times,
                created_at=times,
                closed_at=maybe_times,
            ),
        ),
        case(
            holds._DUE_OWNERS,
            st.fixed_dictionaries(
                {"now": times, "after_id": st.integers(-1, 4), "limit": st.integers(-1, 5)}
            ),
        ),
        case(holds._DUE_OF_USER, st.fixed_dictionaries({"user_id": user_ids, "now": times})),
        case(entries._DUE_HOLDS, st.fixed_dictionaries({"user_id": user_ids, "now": times})),
        case(
            grants._PAYMENT_GRANTS,
            st.fixed_dictionaries({"user_id": user_ids, "payment_id": st.integers(0, 2)}),
        ),
        case(
            held_credits._CLOSE_HOLD,
            st.fixed_dictionaries(
                {
                    "hold_id": st.integers(0, 2),
                    "status": st.sampled_from(["settled", "released", "expired"]),
                    "closed_at": maybe_times,
                    "settled_amount": st.one_of(st.none(), small_ints),
                }
            ),
        ),
        case(
            tiers._INSERT,
            row_values(
                user_id=user_ids,
                from_tier=st.sampled_from(["free", "pro"]),
                to_tier=st.one_of(st.sampled_from(["free", "pro"]), texts),
                **CHANGE_RECORD,
                created_at=times,
            ),
        ),
        case(tiers._BY_ID, st.fixed_dictionaries({"change_id": st.integers(0, 2)})),
        case(
            purchase_analytics._TRACKED,
            st.fixed_dictionaries({"dedupe_key": st.one_of(st.just("seen"), texts)}),
        ),
    ]


async def _seed(db: Database, now: datetime) -> None:
    async with db.engine.begin() as conn:
        for n, email in enumerate(EMAILS, start=1):
            await conn.execute(
                text(
                    "INSERT INTO users (email, tier, credits_available, credits_held,"
                    " created_at, updated_at, stripe_customer_id)"
                    " VALUES (:email, 'free', :n, 0, :now, :now, :customer)"
                ),
                {"email": email, "n": 10 * n, "now": now, "customer": f"cus_{n}"},
            )
            await conn.execute(
                text(
                    "INSERT INTO credit_grants (user_id, amount, remaining, expires_at, source,"
                    " is_purchased, reason, created_at)"
                    " VALUES (:n, :amount, :amount, :expires, 'support', false, 'seed', :now)"
                ),
                {"n": n, "amount": 10 * n, "expires": now + timedelta(days=n), "now": now},
            )
        await conn.execute(
            text(
                "INSERT INTO payments (user_id, kind, stripe_object_id, amount, currency, status,"
                " amount_refunded, credits_granted, credits_revoked, credits_unrecovered,"
                " created_at) VALUES (1, 'subscription', 'in_seed', 900, 'USD', 'paid',"
                " 0, 0, 0, 0, :now)"
            ),
            {"now": now},
        )
        await conn.execute(
            text(
                "INSERT INTO credit_events (user_id, kind, amount, balance_after, reason, source,"
                " actor, idempotency_key, fingerprint, allocations, created_at)"
                " VALUES (1, 'spend', -1, 9, 'seed', 'usage', 'seed', 'key-seed', 'f',"
                " '[[1, 1]]', :now)"
            ),
            {"now": now},
        )
        await conn.execute(
            text(
                "INSERT INTO credit_holds (user_id, amount, reason, status, allocations,"
                " expires_at, created_at) VALUES (2, 3, 'seed', 'active', '[[2, 3]]', :later,"
                " :now)"
            ),
            {"now": now, "later": now + timedelta(minutes=5)},
        )
        await conn.execute(
            text(
                "INSERT INTO tier_changes (user_id, from_tier, to_tier, reason, source, actor,"
                " idempotency_key, fingerprint, created_at) VALUES (1, 'free', 'pro', 'seed',"
                " 'support', 'seed', 'tier-seed', 'f', :now)"
            ),
            {"now": now},
        )
        await conn.execute(
            text(
                "INSERT INTO analytics_events (name, user_id, properties, dedupe_key,"
                " occurred_at) VALUES ('credit_purchase_completed', 1, '{}', 'seen', :now)"
            ),
            {"now": now},
        )
        await conn.execute(
            text(
                "INSERT INTO stripe_events (id, type, created, livemode, payload, status,"
                " attempts, received_at) VALUES ('evt_seed', 'invoice.paid', :now, false,"
                " '{}', 'processed', 1, :now)"
            ),
            {"now": now},
        )


Side = Callable[[AsyncSession, Any, dict[str, Any]], Any]


async def _by_sqlalchemy(session: AsyncSession, stmt: Any, params: dict[str, Any]) -> Any:
    return await (await session.connection()).execute(stmt, params)


async def _outcome(session: AsyncSession, side: Side, stmt: Any, params: dict[str, Any]) -> Any:
    """What one way of sending answers, and the table it wrote as it stands after it."""
    conn = await session.connection()
    # SQLite numbers rows past the largest id, so a rolled back insert gives its id back.
    for table in SERIAL_TABLES if conn.dialect.name == "postgresql" else ():
        await conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                f" (SELECT coalesce(max(id), 0) + 1 FROM {table}), false)"
            )
        )
    savepoint = await session.begin_nested()
    try:
        try:
            result = await side(session, stmt, params)
        except StatementError as error:
            orig = error.orig
            return ("error", type(error), type(orig), getattr(orig, "sqlstate", None))
        except (OverflowError, ValueError) as error:  # the driver's own, let through as it is
            return ("error", type(error), str(error))
        if result.returns_rows:
            # Read as the write paths read rows: by key, by attribute, by position.
            answer: Any = [
                (
                    [(k, v, type(v)) for k, v in row._mapping.items()],
                    [getattr(row, k) for k in row._mapping if k.isidentifier()],
                    tuple(row),
                )
                for row in result
            ]
        else:
            answer = result.rowcount
        table = getattr(stmt, "table", None)
        written = None
        if table is not None:
            order = ", ".join(c.name for c in table.primary_key.columns)
            rows = await conn.execute(text(f"SELECT * FROM {table.name} ORDER BY {order}"))
            written = [tuple(row) for row in rows]
        return ("done", answer, written)
    finally:
        await savepoint.rollback()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_write_statements_answer_alike_on_the_driver_and_on_sqlalchemy(
    dialect: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if dialect == "sqlite":
        path = tmp_path / "prepared.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite+aiosqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_database")
    runner = asyncio.Runner()
    db = Database(url, pool_size=2)
    try:
        if dialect == "postgresql":
            runner.run(_truncate(db))
        runner.run(_seed(db, datetime(2026, 12, 4, 12, tzinfo=UTC)))
        seen: dict[str, int] = {}

        @settings(
            max_examples=500,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(cases(dialect))
        def check(drawn: tuple[Any, dict[str, Any]]) -> None:
            stmt, params = drawn
            runner.run(_compare(db, stmt, params, seen))

        check()
        # Both answers and errors were compared, not only one kind.
        assert seen.get("done", 0) >= 50 and seen.get("error", 0) >= 20, seen
    finally:
        runner.run(db.dispose())
        runner.close()


async def _compare(db: Database, stmt: Any, params: dict[str, Any], seen: dict[str, int]) -> None:
    async with db.read() as session:
        # The statement is one the write paths send on the driver, or the test shows nothing;
        # on SQLite, those that answer rows.
        answers_rows = isinstance(stmt, Select) or bool(getattr(stmt, "_returning", ()))
        expected = answers_rows or db.engine.dialect.name == "postgresql"
        assert prepared.is_prepared(stmt, params, db.engine.dialect) == expected, stmt
        ours = await _outcome(session, prepared.execute, stmt, params)
        theirs = await _outcome(session, _by_sqlalchemy, stmt, params)
        await session.rollback()
    assert ours == theirs, (str(stmt), params)
    seen[ours[0]] = seen.get(ours[0], 0) + 1


async def _truncate(db: Database) -> None:
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    async with db.engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))

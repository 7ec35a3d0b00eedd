"""Batch reads behind the per-request dataloaders: one statement per batch, whatever its size."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, TypeVar

from aiodataloader import DataLoader
from sqlalchemy import BigInteger, Column, Row, Select, Table, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from resolvers.ledger.positions import ledger_positions
from resolvers.models import AnalyticsEvent, CreditEvent, CreditGrant, CreditHold, Payment, User

K = TypeVar("K")
OpenConnection = Callable[[], AbstractAsyncContextManager[AsyncConnection]]
# A sentinel above any id: "no cursor" without a second shape of each statement.
_NO_CURSOR = 2**62

USERS = User.__table__
GRANTS = CreditGrant.__table__
EVENTS = CreditEvent.__table__
PAYMENTS = Payment.__table__
HOLDS = CreditHold.__table__
_KEYS = bindparam("keys", expanding=True)


def _newest_per_owner(table: Table, owner: Column[int]) -> Select[Any]:
    """Each owner's newest rows below a cursor, at most `limit` each, in one statement."""
    rank = func.row_number().over(partition_by=owner, order_by=table.c.id.desc()).label("rank")
    ranked = (
        select(table, rank)
        .where(owner.in_(_KEYS), table.c.id < bindparam("before", type_=BigInteger))
        .subquery()
    )
    return (
        select(*(ranked.c[column.name] for column in table.c))
        .where(ranked.c.rank <= bindparam("limit"))
        .order_by(ranked.c[owner.name], ranked.c.id.desc())
    )


# Built once: constructing a statement costs more than SQLAlchemy's cached compile of it.
_USERS_BY_ID = select(USERS).where(USERS.c.id.in_(_KEYS))
_USERS_BY_EMAIL = select(USERS).where(USERS.c.email.in_(_KEYS))
_OPEN_GRANTS = (
    select(GRANTS)
    .where(GRANTS.c.user_id.in_(_KEYS), GRANTS.c.remaining > 0)
    .order_by(GRANTS.c.expires_at.asc().nulls_last(), GRANTS.c.id)
)
_ACTIVE_HOLDS = (
    select(HOLDS)
    .where(HOLDS.c.user_id.in_(_KEYS), HOLDS.c.status == "active")
    .order_by(HOLDS.c.expires_at, HOLDS.c.id)
)
_GRANT_EXPIRIES = select(GRANTS.c.id, GRANTS.c.expires_at).where(GRANTS.c.id.in_(_KEYS))
_EVENTS_BY_PAYMENT = select(EVENTS).where(EVENTS.c.payment_id.in_(_KEYS)).order_by(EVENTS.c.id)
_GRANTS_BY_PAYMENT = select(GRANTS).where(GRANTS.c.payment_id.in_(_KEYS)).order_by(GRANTS.c.id)
_SHOWN_OVERLAYS = select(AnalyticsEvent.__table__.c.dedupe_key).where(
    AnalyticsEvent.__table__.c.dedupe_key.in_(_KEYS)
)
_NEWEST_EVENTS = _newest_per_owner(EVENTS, EVENTS.c.user_id)
_NEWEST_PAYMENTS = _newest_per_owner(PAYMENTS, PAYMENTS.c.user_id)


async def users_by_id(conn: AsyncConnection, ids: Sequence[int]) -> list[Row[Any] | None]:
    found = {row.id: row for row in await conn.execute(_USERS_BY_ID, {"keys": list(ids)})}
    return [found.get(i) for i in ids]


async def users_by_email(conn: AsyncConnection, emails: Sequence[str]) -> list[Row[Any] | None]:
    found = {row.email: row for row in await conn.execute(_USERS_BY_EMAIL, {"keys": list(emails)})}
    return [found.get(e) for e in emails]


async def open_grants_by_user(
    conn: AsyncConnection, user_ids: Sequence[int]
) -> list[list[Row[Any]]]:
    """Grants with credits left (expired ones included: the caller knows the time)."""
    rows = await conn.execute(_OPEN_GRANTS, {"keys": list(user_ids)})
    return _group(rows, user_ids, lambda g: g.user_id)


async def active_holds_by_user(
    conn: AsyncConnection, user_ids: Sequence[int]
) -> list[list[Row[Any]]]:
    """Holds not settled, released or swept yet (run-out ones included: the caller knows when)."""
    rows = await conn.execute(_ACTIVE_HOLDS, {"keys": list(user_ids)})
    return _group(rows, user_ids, lambda h: h.user_id)


async def grant_expiries(
    conn: AsyncConnection, grant_ids: Sequence[int]
) -> list[tuple[datetime | None] | None]:
    """Each grant's expiry, boxed: (None,) is a grant that never expires."""
    found = {
        r.id: (r.expires_at,)
        for r in await conn.execute(_GRANT_EXPIRIES, {"keys": list(grant_ids)})
    }
    return [found.get(i) for i in grant_ids]


async def newest_events_by_user(
    conn: AsyncConnection, user_ids: Sequence[int], *, limit: int, before_id: int | None
) -> list[list[Row[Any]]]:
    """Each user's newest `limit` ledger events older than `before_id`, newest first."""
    params = {"keys": list(user_ids), "limit": limit, "before": before_id or _NO_CURSOR}
    return _group(await conn.execute(_NEWEST_EVENTS, params), user_ids, lambda r: r.user_id)


async def newest_payments_by_user(
    conn: AsyncConnection, user_ids: Sequence[int], *, limit: int, before_id: int | None
) -> list[list[Row[Any]]]:
    params = {"keys": list(user_ids), "limit": limit, "before": before_id or _NO_CURSOR}
    return _group(await conn.execute(_NEWEST_PAYMENTS, params), user_ids, lambda r: r.user_id)


async def events_by_payment(
    conn: AsyncConnection, payment_ids: Sequence[int]
) -> list[list[Row[Any]]]:
    rows = await conn.execute(_EVENTS_BY_PAYMENT, {"keys": list(payment_ids)})
    return _group(rows, payment_ids, lambda e: e.payment_id)


async def grants_by_payment(
    conn: AsyncConnection, payment_ids: Sequence[int]
) -> list[list[Row[Any]]]:
    rows = await conn.execute(_GRANTS_BY_PAYMENT, {"keys": list(payment_ids)})
    return _group(rows, payment_ids, lambda g: g.payment_id)


async def shown_overlays(conn: AsyncConnection, dedupe_keys: Sequence[str]) -> list[bool]:
    """Whether each once-per-session event is recorded, by its dedupe key."""
    found = set((await conn.execute(_SHOWN_OVERLAYS, {"keys": list(dedupe_keys)})).scalars())
    return [key in found for key in dedupe_keys]


def _group(rows: Any, keys: Sequence[K], key_of: Callable[[Any], K]) -> list[list[Any]]:
    grouped: dict[K, list[Any]] = defaultdict(list)
    for row in rows:
        grouped[key_of(row)].append(row)
    return [grouped.get(k, []) for k in keys]


class Loaders:
    """The dataloaders of one request, made on first use; each batch reads on its own connection.

    Connections are not shared between batches because loaders of different fields fire in the
    same tick, and one connection cannot run two statements at once. Rows come back as plain
    Core rows (attribute access, like the ORM objects), which skips the ORM's bookkeeping on
    the busiest reads.
    """

    def __init__(self, open_connection: OpenConnection) -> None:
        self._open = open_connection
        self._made: dict[Any, DataLoader[Any, Any]] = {}

    def _loader(self, key: Any, batch: Callable[..., Any], **kwargs: Any) -> DataLoader[Any, Any]:
        loader = self._made.get(key)
        if loader is None:
            open_connection = self._open

            async def load(keys: list[Any]) -> list[Any]:
                async with open_connection() as conn:
                    return await batch(conn, keys, **kwargs)

            loader = self._made[key] = DataLoader(load)
        return loader

    @property
    def user_by_id(self) -> DataLoader[int, Any]:
        return self._loader("user_by_id", users_by_id)

    @property
    def user_by_email(self) -> DataLoader[str, Any]:
        return self._loader("user_by_email", users_by_email)

    @property
    def open_grants(self) -> DataLoader[int, list[Any]]:
        return self._loader("open_grants", open_grants_by_user)

    @property
    def active_holds(self) -> DataLoader[int, list[Any]]:
        return self._loader("active_holds", active_holds_by_user)

    @property
    def ledger_position(self) -> DataLoader[int, int | None]:
        return self._loader("ledger_position", ledger_positions)

    @property
    def grant_expiry(self) -> DataLoader[int, tuple[datetime | None] | None]:
        return self._loader("grant_expiry", grant_expiries)

    def newest_events(self, limit: int, before_id: int | None) -> DataLoader[int, list[Any]]:
        return self._loader(
            ("events", limit, before_id), newest_events_by_user, limit=limit, before_id=before_id
        )

    def newest_payments(self, limit: int, before_id: int | None) -> DataLoader[int, list[Any]]:
        return self._loader(
            ("payments", limit, before_id),
            newest_payments_by_user,
            limit=limit,
            before_id=before_id,
        )

    @property
    def payment_events(self) -> DataLoader[int, list[Any]]:
        return self._loader("payment_events", events_by_payment)

    @property
    def payment_grants(self) -> DataLoader[int, list[Any]]:
        return self._loader("payment_grants", grants_by_payment)

    @property
    def overlay_shown(self) -> DataLoader[str, bool]:
        return self._loader("overlay_shown", shown_overlays)

    def prime_user(self, user: User) -> None:
        """A user already read (viewer, mutation result) need not be read again."""
        self.user_by_id.prime(user.id, user)


def unexpired(grants: list[Any], now: datetime) -> list[Any]:
    return [g for g in grants if g.expires_at is None or g.expires_at > now]

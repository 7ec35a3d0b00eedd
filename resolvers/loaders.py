"""Batch reads behind the per-request dataloaders: one statement per batch, whatever its size."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, TypeVar

from aiodataloader import DataLoader
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from resolvers.models import CreditEvent, CreditGrant, Payment, User

K = TypeVar("K")
Row = TypeVar("Row")
OpenSession = Callable[[], AbstractAsyncContextManager[AsyncSession]]


async def users_by_id(session: AsyncSession, ids: Sequence[int]) -> list[User | None]:
    rows = (await session.execute(select(User).where(User.id.in_(ids)))).scalars()
    found = {row.id: row for row in rows}
    return [found.get(i) for i in ids]


async def users_by_email(session: AsyncSession, emails: Sequence[str]) -> list[User | None]:
    rows = (await session.execute(select(User).where(User.email.in_(emails)))).scalars()
    found = {row.email: row for row in rows}
    return [found.get(e) for e in emails]


async def open_grants_by_user(
    session: AsyncSession, user_ids: Sequence[int]
) -> list[list[CreditGrant]]:
    """Grants with credits left (expired ones included: the caller knows the time)."""
    stmt = (
        select(CreditGrant)
        .where(CreditGrant.user_id.in_(user_ids), CreditGrant.remaining > 0)
        .order_by(CreditGrant.expires_at.asc().nulls_last(), CreditGrant.id)
    )
    return _group((await session.execute(stmt)).scalars(), user_ids, lambda g: g.user_id)


async def newest_events_by_user(
    session: AsyncSession, user_ids: Sequence[int], *, limit: int, before_id: int | None
) -> list[list[CreditEvent]]:
    """Each user's newest `limit` ledger events older than `before_id`, newest first."""
    condition = CreditEvent.id < before_id if before_id is not None else None
    return await _newest_per_owner(
        session, CreditEvent, CreditEvent.user_id, user_ids, limit, condition
    )


async def newest_payments_by_user(
    session: AsyncSession, user_ids: Sequence[int], *, limit: int, before_id: int | None
) -> list[list[Payment]]:
    condition = Payment.id < before_id if before_id is not None else None
    return await _newest_per_owner(session, Payment, Payment.user_id, user_ids, limit, condition)


async def events_by_payment(
    session: AsyncSession, payment_ids: Sequence[int]
) -> list[list[CreditEvent]]:
    stmt = (
        select(CreditEvent).where(CreditEvent.payment_id.in_(payment_ids)).order_by(CreditEvent.id)
    )
    return _group((await session.execute(stmt)).scalars(), payment_ids, lambda e: e.payment_id)


async def grants_by_payment(
    session: AsyncSession, payment_ids: Sequence[int]
) -> list[list[CreditGrant]]:
    stmt = (
        select(CreditGrant).where(CreditGrant.payment_id.in_(payment_ids)).order_by(CreditGrant.id)
    )
    return _group((await session.execute(stmt)).scalars(), payment_ids, lambda g: g.payment_id)


async def _newest_per_owner(
    session: AsyncSession,
    model: Any,
    owner: Any,
    owner_ids: Sequence[int],
    limit: int,
    condition: Any,
) -> list[list[Any]]:
    # One statement for every owner: number each owner's rows newest first, keep the first few.
    rank = func.row_number().over(partition_by=owner, order_by=model.id.desc()).label("rank")
    inner: Select[Any] = select(model, rank).where(owner.in_(owner_ids))
    if condition is not None:
        inner = inner.where(condition)
    ranked = inner.subquery()
    row = aliased(model, ranked)
    stmt = (
        select(row).where(ranked.c.rank <= limit).order_by(ranked.c[owner.key], ranked.c.id.desc())
    )
    rows = (await session.execute(stmt)).scalars()
    return _group(rows, owner_ids, lambda r: getattr(r, owner.key))


def _group(rows: Any, keys: Sequence[K], key_of: Callable[[Any], K]) -> list[list[Any]]:
    grouped: dict[K, list[Any]] = defaultdict(list)
    for row in rows:
        grouped[key_of(row)].append(row)
    return [grouped.get(k, []) for k in keys]


class Loaders:
    """The dataloaders of one request, made on first use; each batch reads in its own session.

    Sessions are not shared between batches because loaders of different fields fire in the
    same tick, and one session cannot run two statements at once.
    """

    def __init__(self, open_session: OpenSession) -> None:
        self._open = open_session
        self._made: dict[Any, DataLoader[Any, Any]] = {}

    def _loader(self, key: Any, batch: Callable[..., Any], **kwargs: Any) -> DataLoader[Any, Any]:
        loader = self._made.get(key)
        if loader is None:
            open_session = self._open

            async def load(keys: list[Any]) -> list[Any]:
                async with open_session() as session:
                    return await batch(session, keys, **kwargs)

            loader = self._made[key] = DataLoader(load)
        return loader

    @property
    def user_by_id(self) -> DataLoader[int, User | None]:
        return self._loader("user_by_id", users_by_id)

    @property
    def user_by_email(self) -> DataLoader[str, User | None]:
        return self._loader("user_by_email", users_by_email)

    @property
    def open_grants(self) -> DataLoader[int, list[CreditGrant]]:
        return self._loader("open_grants", open_grants_by_user)

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
    def payment_events(self) -> DataLoader[int, list[CreditEvent]]:
        return self._loader("payment_events", events_by_payment)

    @property
    def payment_grants(self) -> DataLoader[int, list[CreditGrant]]:
        return self._loader("payment_grants", grants_by_payment)

    def prime_user(self, user: User) -> None:
        """A user already read (viewer, mutation result) need not be read again."""
        self.user_by_id.prime(user.id, user)


def unexpired(grants: list[CreditGrant], now: datetime) -> list[CreditGrant]:
    return [g for g in grants if g.expires_at is None or g.expires_at > now]

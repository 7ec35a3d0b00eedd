"""The transaction a domain operation of several writes runs in (gateway.db.Database is one)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.ledger.statements import Statements

T = TypeVar("T")


class UnitOfWork(Protocol):
    async def write(
        self,
        work: Callable[[AsyncSession], Awaitable[T]],
        alone: Callable[[Statements], Awaitable[T | None]] | None = None,
    ) -> T:
        """Run `work` in one transaction: committed, or rolled back if it returns a `Failure`.

        `alone`, where the database can, first makes the change in one statement outside any
        transaction; its None hands the change to `work`."""
        ...


class DatabaseUnreachable(Exception):
    """The unit of work could not reach its database: nothing was done, and nothing can be
    recorded either; the caller answers "try again" (gateway.db raises a subclass)."""

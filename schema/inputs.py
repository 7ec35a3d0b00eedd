"""Mutation inputs, and turning them into resolver arguments (checked at the edge)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.errors import InvalidInput
from resolvers.ledger.statements import Statements
from resolvers.models import parse_row_id
from resolvers.users import UserRef, check_email
from schema.context import UnitOfWork

T = TypeVar("T")


@strawberry.input(description="Name the user by exactly one of email or userId.")
class GrantCreditsInput:
    amount: int
    reason: str
    email: str | None = None
    user_id: strawberry.ID | None = None
    expires_at: datetime | None = None
    idempotency_key: str | None = None


@strawberry.input(description="Name the user by exactly one of email or userId.")
class ConsumeCreditsInput:
    amount: int
    reason: str = "ai usage"
    email: str | None = None
    user_id: strawberry.ID | None = None
    idempotency_key: str | None = None


@strawberry.input(description="Name the user by exactly one of email or userId.")
class SetTierInput:
    tier: str
    reason: str
    email: str | None = None
    user_id: strawberry.ID | None = None
    idempotency_key: str | None = None


@strawberry.input
class UpsertUserInput:
    email: str
    external_id: str | None = None
    locale: str | None = None


def user_ref(email: str | None, user_id: strawberry.ID | None) -> UserRef | InvalidInput:
    if (email is None) == (user_id is None):
        return InvalidInput(field="email", reason="give exactly one of email or userId")
    if user_id is not None:
        if (parsed := parse_row_id(str(user_id))) is None:
            return InvalidInput(field="userId", reason="not a user id")
        return UserRef(user_id=parsed)
    assert email is not None
    if failure := check_email(email.strip().lower()):
        return failure
    return UserRef(email=email)


async def write_for(
    db: UnitOfWork,
    ref: UserRef | InvalidInput,
    work: Callable[[AsyncSession, UserRef], Awaitable[T]],
    alone: Callable[[Statements, UserRef], Awaitable[T | None]] | None = None,
) -> T | InvalidInput:
    """`work` on the named user in one transaction; a badly named user is the answer instead.

    `alone`: the same change in one statement, tried first where the database allows it."""
    if isinstance(ref, InvalidInput):
        return ref
    if alone is None:
        return await db.write(lambda session: work(session, ref))
    return await db.write(
        lambda session: work(session, ref), lambda statements: alone(statements, ref)
    )

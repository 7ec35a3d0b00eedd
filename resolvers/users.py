"""Users: finding them by email or id, and `upsert_user`, the one way users come into being."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.catalog.model import Catalog
from resolvers.errors import InvalidInput, UnknownTier, UserNotFound
from resolvers.ledger.changes import record_change
from resolvers.models import User

# Deliberately loose: one @, no spaces, a dot in the domain. The main app verifies addresses.
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")
MAX_EMAIL_LENGTH = 320


@dataclass(frozen=True)
class UserRef:
    """A user named by email or by id, as support, the CLI and the API name them."""

    email: str | None = None
    user_id: int | None = None

    def not_found(self) -> UserNotFound:
        return UserNotFound(email=self.email, user_id=self.user_id)


@dataclass(frozen=True)
class UserUpserted:
    user: User
    created: bool


def normalize_email(email: str) -> str:
    return email.strip().lower()


def check_email(email: str, field: str = "email") -> InvalidInput | None:
    # isprintable() is False for controls, surrogates and format characters: bidi overrides
    # (U+202E) and zero-width ones make one address display as another in support's tools.
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL.match(email) or not email.isprintable():
        return InvalidInput(field=field, reason="not a well-formed email address")
    return None


# Built once: every write starts here, and building a statement costs more than running the
# cached compiled form of one.
_BY_ID = select(User).where(User.id == bindparam("key"))
_BY_EMAIL = select(User).where(User.email == bindparam("key"))
# Every change to a user's credits or tier locks the user row first; that is what makes
# concurrent spends of one balance take turns (SQLite: BEGIN IMMEDIATE does the same).
_LOCK_BY_ID = _BY_ID.with_for_update().execution_options(populate_existing=True)
_LOCK_BY_EMAIL = _BY_EMAIL.with_for_update().execution_options(populate_existing=True)


async def find_user(session: AsyncSession, ref: UserRef, *, lock: bool = False) -> User | None:
    """The user `ref` names, or None. With `lock`, the row is locked for the transaction."""
    if ref.user_id is not None:
        stmt, key = (_LOCK_BY_ID if lock else _BY_ID), ref.user_id
    elif ref.email is not None:
        stmt, key = (_LOCK_BY_EMAIL if lock else _BY_EMAIL), normalize_email(ref.email)
    else:
        return None
    return (await session.execute(stmt, {"key": key})).scalar_one_or_none()


async def upsert_user(
    session: AsyncSession,
    *,
    email: str,
    catalog: Catalog,
    now: datetime,
    external_id: str | None = None,
    locale: str | None = None,
    tier: str | None = None,
) -> UserUpserted | InvalidInput | UnknownTier:
    """Create the user with this email, or update its external id and locale.

    The tier is only set on creation: an existing user's tier changes through `set_tier` or
    Stripe, never as a side effect of the main app telling us about a user again.
    """
    email = normalize_email(email)
    if failure := check_email(email):
        return failure
    if locale is not None and not _LOCALE.match(locale):
        return InvalidInput(field="locale", reason="not a locale identifier such as en or nl-NL")
    if external_id is not None and not 0 < len(external_id) <= 255:
        return InvalidInput(field="externalId", reason="must be 1 to 255 characters")
    tier_code = tier or catalog.default_tier.code
    if catalog.tier(tier_code) is None:
        return UnknownTier(tier=tier_code, known=catalog.tier_codes)

    user = await find_user(session, UserRef(email=email), lock=True)
    if external_id is not None:
        # Checked here so that a taken id is an answer, not a unique-index error that the unit
        # of work would retry in vain and then raise.
        owner = await session.scalar(select(User.id).where(User.external_id == external_id))
        if owner is not None and (user is None or owner != user.id):
            return InvalidInput(field="externalId", reason="already belongs to another user")
    if user is not None:
        if external_id is not None:
            user.external_id = external_id
        if locale is not None:
            user.locale = locale
        user.updated_at = now
        return UserUpserted(user=user, created=False)

    # A concurrent upsert of the same email makes this insert fail on the unique index; the
    # unit of work retries and the second attempt finds the row.
    user = User(
        email=email,
        external_id=external_id,
        locale=locale,
        tier=tier_code,
        credits_available=0,
        created_at=now,
        updated_at=now,
    )
    session.add(user)
    await session.flush()
    record_change(session, action="user_created", user_id=user.id, email=email, tier=tier_code)
    return UserUpserted(user=user, created=True)


async def list_users(
    session: AsyncSession,
    *,
    limit: int,
    after_id: int | None = None,
    tier: str | None = None,
    email_prefix: str | None = None,
) -> list[User]:
    """Users by id after a cursor; optionally of one tier, or whose email starts so."""
    stmt = users_page_statement(
        limit=limit, after_id=after_id, tier=tier, email_prefix=email_prefix
    )
    return list((await session.execute(stmt)).scalars())


def users_page_statement(
    *, limit: int, after_id: int | None, tier: str | None, email_prefix: str | None
) -> Select[tuple[User]]:
    """The statement behind `list_users`; also run without the ORM by the compiled executor."""
    stmt = select(User).order_by(User.id).limit(limit)
    if after_id is not None:
        stmt = stmt.where(User.id > after_id)
    if tier is not None:
        stmt = stmt.where(User.tier == tier)
    if email_prefix:
        prefix = normalize_email(email_prefix)
        # A literal prefix: % and _ typed by support are not wildcards.
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(User.email.like(escaped + "%", escape="\\"))
    return stmt


async def count_users(session: AsyncSession) -> int:
    return (await session.execute(select(func.count()).select_from(User))).scalar_one()

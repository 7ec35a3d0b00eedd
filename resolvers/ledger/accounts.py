"""The user row a change works on: locked once, changed in memory, written back once.

Every credit and tier change locks the user row first (SQLite: BEGIN IMMEDIATE does the same);
that lock is what makes concurrent changes of one balance take turns. The write paths use SQLAlchemy
Core, not the ORM: an `Account` is a plain copy of the row that remembers what it was read as, so
`save_account` sends one UPDATE of the columns that changed, or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.ledger.idempotency import KEY_USE, KeyUse, find_key_use, key_use_of, lock_key
from resolvers.models import User
from resolvers.prepared import execute
from resolvers.users import UserRef, normalize_email

USERS = User.__table__


@dataclass(eq=False)
class Account:
    """A locked user row. Attribute names are the table's, so readers treat it as a user row."""

    id: int
    email: str
    external_id: str | None
    locale: str | None
    tier: str
    trial_ends_at: datetime | None
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    subscription_status: str | None
    subscription_price_id: str | None
    subscription_period_end: datetime | None
    subscription_event_at: datetime | None
    credits_available: int
    credits_next_expiry: datetime | None
    allowance_period_start: datetime | None
    created_at: datetime
    updated_at: datetime
    credits_held: int
    holds_next_expiry: datetime | None
    # What the lock statement learnt about the key the caller will use (see `lock_account`).
    key: str | None = field(default=None, repr=False)
    key_use: KeyUse | None = field(default=None, repr=False)
    _saved: dict[str, Any] = field(default_factory=dict, repr=False)

    def changes(self) -> dict[str, Any]:
        return {
            name: value
            for name, saved in self._saved.items()
            if (value := getattr(self, name)) != saved
        }


_COLUMNS = tuple(f.name for f in fields(Account) if f.name in USERS.c)


def _lock_by(column: Any) -> Any:
    # The key's earlier use rides on the lock statement: one round trip fewer per keyed change.
    # The key's own lock is held by then (lock_key), so no other use of it can be in flight.
    return (
        select(
            *(USERS.c[name] for name in _COLUMNS),
            KEY_USE.c.key_kind,
            KEY_USE.c.key_row_id,
            KEY_USE.c.key_fingerprint,
        )
        .select_from(USERS.outerjoin(KEY_USE, true()))
        .where(column == bindparam("ref"))
        .with_for_update(of=USERS)
    )


# Built once.
_LOCK_BY_ID = _lock_by(USERS.c.id)
_LOCK_BY_EMAIL = _lock_by(USERS.c.email)


async def lock_account(
    session: AsyncSession, ref: UserRef | Account, *, idempotency_key: str | None = None
) -> Account | None:
    """Lock the user `ref` names for this transaction, and look up where the key was used.

    Given an `Account` (already locked by the caller in this transaction), returns it as is,
    with the key's use looked up if it was not: a lock is taken once per change. A key is
    locked before the row (`lock_key`); the keys an account comes with later are the
    gateway's own (a Stripe payment's grant, an allowance), each used by one kind of change of
    this user only, so the row lock and the table's unique index suffice for them.
    """
    if isinstance(ref, Account):
        if idempotency_key is not None and ref.key != idempotency_key:
            ref.key_use = await find_key_use(session, idempotency_key)
            ref.key = idempotency_key
        return ref
    if ref.user_id is not None:
        stmt, value = _LOCK_BY_ID, ref.user_id
    elif ref.email is not None:
        stmt, value = _LOCK_BY_EMAIL, normalize_email(ref.email)
    else:
        return None
    await lock_key(session, idempotency_key)
    row = (await execute(session, stmt, {"ref": value, "idempotency_key": idempotency_key})).first()
    if row is None:
        return None
    values = {name: row._mapping[name] for name in _COLUMNS}
    return Account(**values, key=idempotency_key, key_use=key_use_of(row), _saved=dict(values))


async def save_account(session: AsyncSession, account: Account) -> None:
    """Write the columns changed since the row was read (or last saved); nothing if none."""
    changes = account.changes()
    if not changes:
        return
    names = tuple(changes)
    stmt = _UPDATES.get(names)
    if stmt is None:
        stmt = _UPDATES[names] = (
            update(USERS)
            .where(USERS.c.id == bindparam("account_id"))
            .values({name: bindparam(f"new_{name}") for name in names})
        )
    params = {f"new_{name}": value for name, value in changes.items()}
    await execute(session, stmt, {"account_id": account.id, **params})
    account._saved.update(changes)


# One UPDATE per set of changed columns, built on first use: a spend always changes the same few.
_UPDATES: dict[tuple[str, ...], Any] = {}

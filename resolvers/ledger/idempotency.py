"""Idempotency keys: one key space for every kind of change, and what a reused key answers.

A key names one operation, whichever change used it first: a ledger event (credit grant, spend,
take-back, hold reserve, settle or release), a tier change, a usage count or an override. The
same key with the same arguments answers the first result; with other arguments, or for another
kind of change, it is an IdempotencyConflict. The one place a key's earlier use is looked up is
`KEY_USE` below: the lock statement carries it (resolvers.ledger.accounts), and so does the
PostgreSQL spend function (migration 0005).

Two first uses of one key at once, of any kinds and for any users: each table's unique index
only stops two of one kind, and a user's row lock only orders changes of that user. So on
PostgreSQL every keyed change first takes the key's own lock (`lock_key`: a transaction advisory
lock on the key's hash, held to COMMIT), then the user row, and only then looks the key up: the
second of two uses waits for the first to commit and sees it. The spend and usage functions
take the same lock the same way (migration 0010); one order everywhere, key then user, so two
changes never wait on each other in a circle. A paid Stripe event's INSERT takes its grant key's
lock itself (resolvers.billing.deliveries): a statement that reads no key's use may carry it,
and `lock_key` then sends nothing. SQLite has one writer at a time (BEGIN
IMMEDIATE): the lookup after it already sees every committed use.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import String, bindparam, func, literal_column, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from resolvers.errors import IdempotencyConflict, InvalidInput
from resolvers.models import CreditEvent, EntitlementOverride, TierChange, UsageEvent
from resolvers.prepared import execute

# Keys the gateway makes for itself (plan allowances, Stripe payments). A caller's key in these
# namespaces would claim the key first and so silently block that allowance or those credits.
RESERVED_KEY_PREFIXES = ("allowance:", "stripe:")
# The sources whose keys come from outside the gateway.
CALLER_SOURCES = ("support", "usage")
MAX_IDEMPOTENCY_KEY_LENGTH = 255
# What a key's advisory lock hashes: the key in a scope of its own, so it never takes the lock
# of another use of advisory locks. Migration 0010's functions hash the same text.
KEY_LOCK_SCOPE = "idempotency:"


class KeyKind(StrEnum):
    """The table a key's first use was written to."""

    CREDIT = "credit"  # a ledger event: grant, spend, take-back, hold reserve, settle, release
    TIER = "tier"
    USAGE = "usage"
    OVERRIDE = "override"


@dataclass(frozen=True)
class KeyUse:
    """Where a key was used first: the kind of change, its row, and the digest of its arguments."""

    kind: KeyKind
    row_id: int
    fingerprint: str | None


def fingerprint(operation: str, **args: Any) -> str:
    """A digest of what a keyed call asked for: equal digests mean a true retry."""
    text = json.dumps([operation, args], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def check_key(key: str | None, source: str) -> InvalidInput | None:
    if key is None:
        return None
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        return InvalidInput(
            field="idempotencyKey", reason=f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
        )
    if source in CALLER_SOURCES and key.startswith(RESERVED_KEY_PREFIXES):
        return InvalidInput(
            field="idempotencyKey",
            reason=f"keys starting with {' or '.join(RESERVED_KEY_PREFIXES)} are the gateway's own",
        )
    return None


def earlier_use(
    used: KeyUse | None, *, key: str | None, kind: KeyKind, digest: str
) -> int | IdempotencyConflict | None:
    """The id of the row a true retry answers again, a conflict, or None: the key is free."""
    if key is None or used is None:
        return None
    if used.kind != kind or used.fingerprint != digest:
        return IdempotencyConflict(idempotency_key=key)
    return used.row_id


def key_use_of(row: Any) -> KeyUse | None:
    """The KeyUse in a row that carries `KEY_USE`'s columns (NULL, or no row: the key is free)."""
    if row is None or row.key_kind is None:
        return None
    return KeyUse(KeyKind(row.key_kind), row.key_row_id, row.key_fingerprint)


async def find_key_use(session: AsyncSession, key: str | None) -> KeyUse | None:
    """Where `key` was used first, for a caller that already holds its lock; None: unused."""
    if key is None:
        return None
    return key_use_of((await execute(session, _FIND, {"idempotency_key": key})).first())


async def lock_key(session: AsyncSession, key: str | None) -> None:
    """Take `key`'s lock for this transaction (PostgreSQL), before the user row's lock.

    Its own statement: the key lookup after it must read in a snapshot taken once the lock is
    granted, so that a use committed while this transaction waited is seen. Nothing is sent
    when an earlier statement of this transaction took it already (`note_key_locked`).
    """
    if key is None:
        return
    bind = session.bind
    if bind is None or bind.dialect.name != "postgresql":
        return
    conn = await session.connection()
    if key in _locked_keys(session, conn):
        return
    await execute(session, _LOCK_KEY, {"scoped_key": scoped_key(key)})


def scoped_key(key: str) -> str:
    """The text `KEY_LOCK` hashes for `key`: the `scoped_key` parameter of a statement using it."""
    return KEY_LOCK_SCOPE + key


def note_key_locked(session: AsyncSession, conn: AsyncConnection, key: str) -> None:
    """Record that a statement of this transaction took `key`'s lock (`KEY_LOCK` in its WHERE).

    Such a statement must read nothing a key's use is looked up in: its snapshot is older than
    the lock. `lock_key` then sends nothing for this key until the transaction ends.
    """
    _locked_keys(session, conn).add(key)


def _locked_keys(session: AsyncSession, conn: AsyncConnection) -> set[str]:
    # Kept per transaction, not per session: an advisory xact lock ends with its transaction.
    transaction = conn.sync_connection.get_transaction() if conn.sync_connection else None
    held = session.info.get(_LOCKED_KEYS)
    if held is None or held[0] is not transaction:
        held = session.info[_LOCKED_KEYS] = (transaction, set())
    return held[1]


def _uses(table: Any, kind: KeyKind) -> Any:
    return select(
        literal_column(f"'{kind.value}'").label("key_kind"),
        table.c.id.label("key_row_id"),
        table.c.fingerprint.label("key_fingerprint"),
    ).where(table.c.idempotency_key == _KEY)


_KEY = bindparam("idempotency_key", type_=CreditEvent.__table__.c.idempotency_key.type)
# Each table's unique index answers its part: four index probes, in one statement. A key found
# in two tables (only in data written before the key space was one) answers one of its uses.
KEY_USE = (
    union_all(
        _uses(CreditEvent.__table__, KeyKind.CREDIT),
        _uses(TierChange.__table__, KeyKind.TIER),
        _uses(UsageEvent.__table__, KeyKind.USAGE),
        _uses(EntitlementOverride.__table__, KeyKind.OVERRIDE),
    )
    .limit(1)
    .subquery("key_use")
)
_FIND = select(KEY_USE.c.key_kind, KEY_USE.c.key_row_id, KEY_USE.c.key_fingerprint)
# A key's lock as an expression (PostgreSQL): `KEY_LOCK.is_not(None)` in a WHERE takes it.
KEY_LOCK = func.pg_advisory_xact_lock(
    func.hashtextextended(bindparam("scoped_key", type_=String), 0)
)
_LOCK_KEY = select(KEY_LOCK)
_LOCKED_KEYS = "idempotency_locked_keys"

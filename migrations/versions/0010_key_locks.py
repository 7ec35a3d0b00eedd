"""spend_credits and record_usage take the idempotency key's lock before the user row's.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 00:00:00

Each kind of change keeps its keys in its own table, and a user's row lock orders only that
user's changes: two kinds of change sent one key at once, for two users (or for one, where the
Python rule read the key before its row lock was granted), both took effect. Every keyed change
now first takes a transaction advisory lock on the key's hash (resolvers/ledger/idempotency.py:
lock_key, the same text hashed: 'idempotency:' and the key), then the user row; the second of
two uses waits for the first to commit, and its lookup after the lock sees it. The functions
are 0005's spend and 0009's count with that one statement put before their row lock, nothing
else changed; same signatures and results: CREATE OR REPLACE, and downgrade puts those back.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Where the lock goes: just before each function's lock of the user row.
ROW_LOCK = "    -- The user row first, as every change does:"
KEY_LOCK = """    -- The key's lock first, then the user row, as every keyed change takes them: a
    -- use of this key by any change of any user that was in flight has committed once it
    -- is granted, and the lookups below (each statement its own snapshot) see it.
    IF p_key IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('idempotency:' || p_key, 0));
    END IF;
"""


def _revision(file_name: str) -> Any:
    """An earlier revision's module, for its function text (revisions are never edited)."""
    path = Path(__file__).with_name(file_name)
    spec = importlib.util.spec_from_file_location(f"revision_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _previous_functions() -> tuple[str, str]:
    spend = _revision("0005_one_idempotency_key_space.py").SPEND_CREDITS_ONE_KEY_SPACE
    count = _revision("0009_record_usage_function.py").RECORD_USAGE
    return str(spend), str(count)


def with_key_lock(function: str) -> str:
    assert function.count(ROW_LOCK) == 1, "one row lock to put the key's lock before"
    return function.replace(ROW_LOCK, KEY_LOCK + ROW_LOCK)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for function in _previous_functions():
            op.execute(with_key_lock(function))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for function in _previous_functions():
            op.execute(function)

"""Changes are notified only for users a live subscription watches.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 19:00:00

0007's triggers sent a NOTIFY for every row written. PostgreSQL serialises the commits of every
transaction that issued a NOTIFY (a global lock held from pre-commit to the end of commit,
WAL flush included), so every write of the gateway waited for one fsync at a time: pgbench
calling `spend_credits` directly with 16 clients ran 757 tps with the triggers and 1,770 tps
with them disabled. Only users someone is subscribed to need a notification, so each process
with a subscriber records the pair (user, the backend pid of its LISTEN connection) in
`live_watches` (gateway.live.watches), and the triggers notify only when the written user has a
row there. A write nobody watches takes no lock beyond its own.

The table exists on SQLite too, so that both schemas are the same; SQLite's processes poll and
never write it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "entitlements_changed"
# (function, the column holding the user's id): users' own trigger, and the rows by user_id.
FUNCTIONS = (("entitlements_notify_user", "id"), ("entitlements_notify_user_id", "user_id"))


def _watched_only(name: str, column: str) -> str:
    return f"""CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM live_watches WHERE user_id = NEW.{column}) THEN
        PERFORM pg_notify('{CHANNEL}', NEW.{column}::text);
    END IF;
    RETURN NULL;
END $$"""


def _every_row(name: str, column: str) -> str:
    """0007's body, as it was."""
    return f"""CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', NEW.{column}::text);
    RETURN NULL;
END $$"""


def upgrade() -> None:
    op.create_table(
        "live_watches",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("listener_pid", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_live_watches_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "listener_pid", name=op.f("pk_live_watches")),
    )
    if op.get_bind().dialect.name == "postgresql":
        for name, column in FUNCTIONS:
            op.execute(_watched_only(name, column))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, column in FUNCTIONS:
            op.execute(_every_row(name, column))
    op.drop_table("live_watches")

"""PostgreSQL tells listeners which user a committed write changed, from triggers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 16:50:00

Live subscriptions on every gateway process hear a change through NOTIFY on the
`entitlements_changed` channel, with the user's id as the payload. Sent from triggers, it costs
no round trip of its own: the one-statement spend (`spend_credits`, run outside an explicit
transaction) notifies as it writes, and every other path does too, whoever writes (a gateway,
the CLI, a cron job). A NOTIFY is delivered only when its transaction commits, and PostgreSQL
folds identical notifications of one transaction into one. SQLite has no NOTIFY: its processes
poll the ledger position (gateway.live.feed), so this revision does nothing there.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "entitlements_changed"
# The tables whose rows say that a user's balance, holds, tier, usage or overrides changed.
BY_USER_ID = (
    "credit_events",
    "credit_holds",
    "tier_changes",
    "usage_events",
    "entitlement_overrides",
)

# One statement each: asyncpg prepares what it runs, and a prepared statement holds one command.
FUNCTIONS = [
    f"""CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', NEW.{column}::text);
    RETURN NULL;
END $$"""
    for name, column in (
        ("entitlements_notify_user", "id"),
        ("entitlements_notify_user_id", "user_id"),
    )
]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for function in FUNCTIONS:
        op.execute(function)
    op.execute(
        "CREATE TRIGGER entitlements_notify AFTER INSERT OR UPDATE ON users "
        "FOR EACH ROW EXECUTE FUNCTION entitlements_notify_user()"
    )
    for table in BY_USER_ID:
        op.execute(
            f"CREATE TRIGGER entitlements_notify AFTER INSERT OR UPDATE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION entitlements_notify_user_id()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in ("users", *BY_USER_ID):
        op.execute(f"DROP TRIGGER IF EXISTS entitlements_notify ON {table}")
    op.execute("DROP FUNCTION IF EXISTS entitlements_notify_user()")
    op.execute("DROP FUNCTION IF EXISTS entitlements_notify_user_id()")

"""The outbox of outgoing webhooks: events, their deliveries, balance alerts, the dispatch lease.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "outgoing_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=255), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_outgoing_events_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outgoing_events")),
        sa.UniqueConstraint("message_id", name=op.f("uq_outgoing_events_message_id")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_outgoing_events_dedupe_key")),
    )
    op.create_index(op.f("ix_outgoing_events_type"), "outgoing_events", ["type"])
    op.create_index(op.f("ix_outgoing_events_user_id"), "outgoing_events", ["user_id"])

    op.create_table(
        "outgoing_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(length=1000), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _WHEN, nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", _WHEN, nullable=True),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["outgoing_events.id"],
            name=op.f("fk_outgoing_deliveries_event_id_outgoing_events"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_outgoing_deliveries_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outgoing_deliveries")),
    )
    op.create_index(op.f("ix_outgoing_deliveries_event_id"), "outgoing_deliveries", ["event_id"])
    op.create_index(
        "ix_outgoing_deliveries_status_next_attempt_at",
        "outgoing_deliveries",
        ["status", "next_attempt_at"],
    )
    op.create_index(
        "ix_outgoing_deliveries_user_id_endpoint_id",
        "outgoing_deliveries",
        ["user_id", "endpoint", "id"],
    )

    op.create_table(
        "balance_alerts",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("low_balance_threshold", sa.Integer(), nullable=True),
        sa.Column("is_low", sa.Boolean(), nullable=False),
        sa.Column("is_depleted", sa.Boolean(), nullable=False),
        sa.Column("updated_at", _WHEN, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_balance_alerts_user_id_users")
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_balance_alerts")),
    )

    op.create_table(
        "outbox_leases",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=True),
        sa.Column("expires_at", _WHEN, nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_outbox_leases")),
    )


def downgrade() -> None:
    op.drop_table("outbox_leases")
    op.drop_table("balance_alerts")
    op.drop_index("ix_outgoing_deliveries_user_id_endpoint_id", table_name="outgoing_deliveries")
    op.drop_index("ix_outgoing_deliveries_status_next_attempt_at", table_name="outgoing_deliveries")
    op.drop_index(op.f("ix_outgoing_deliveries_event_id"), table_name="outgoing_deliveries")
    op.drop_table("outgoing_deliveries")
    op.drop_index(op.f("ix_outgoing_events_user_id"), table_name="outgoing_events")
    op.drop_index(op.f("ix_outgoing_events_type"), table_name="outgoing_events")
    op.drop_table("outgoing_events")

"""Entitlements: usage and overrides on the user row, the usage record, overrides' history.

Revision ID: 0004
Revises: 0001
Create Date: 2026-12-03 13:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("entitlement_usage", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("entitlement_overrides", sa.JSON(), nullable=True))

    op.create_table(
        "usage_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("feature", sa.String(length=64), nullable=False),
        sa.Column("period", sa.String(length=32), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("used_after", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_usage_events_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_events")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_usage_events_idempotency_key")),
    )
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_usage_events_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_usage_events_request_id"), ["request_id"], unique=False
        )
        batch_op.create_index("ix_usage_events_user_id_id", ["user_id", "id"], unique=False)

    op.create_table(
        "entitlement_overrides",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("feature", sa.String(length=64), nullable=False),
        sa.Column("has_access", sa.Boolean(), nullable=False),
        sa.Column("usage_limit", sa.Integer(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "usage_limit IS NULL OR usage_limit >= 0",
            name=op.f("ck_entitlement_overrides_limit_not_negative"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_entitlement_overrides_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entitlement_overrides")),
        sa.UniqueConstraint(
            "idempotency_key", name=op.f("uq_entitlement_overrides_idempotency_key")
        ),
    )
    with op.batch_alter_table("entitlement_overrides", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_entitlement_overrides_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_entitlement_overrides_request_id"), ["request_id"], unique=False
        )
        batch_op.create_index(
            "ix_entitlement_overrides_user_id_feature_id",
            ["user_id", "feature", "id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("entitlement_overrides", schema=None) as batch_op:
        batch_op.drop_index("ix_entitlement_overrides_user_id_feature_id")
        batch_op.drop_index(batch_op.f("ix_entitlement_overrides_request_id"))
        batch_op.drop_index(batch_op.f("ix_entitlement_overrides_created_at"))

    op.drop_table("entitlement_overrides")
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_events_user_id_id")
        batch_op.drop_index(batch_op.f("ix_usage_events_request_id"))
        batch_op.drop_index(batch_op.f("ix_usage_events_created_at"))

    op.drop_table("usage_events")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("entitlement_overrides")
        batch_op.drop_column("entitlement_usage")

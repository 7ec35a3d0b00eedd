"""Initial schema: users, credit ledger, tier history, payments, Stripe events, analytics, keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-24 15:54:19.108857
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
        sa.UniqueConstraint("name", name=op.f("uq_api_keys_name")),
    )
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=128), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_object_id", sa.String(length=255), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_stripe_events_request_id"), ["request_id"], unique=False
        )
        batch_op.create_index(
            "ix_stripe_events_status_received_at", ["status", "received_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_stripe_events_stripe_customer_id"), ["stripe_customer_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_stripe_events_stripe_object_id"), ["stripe_object_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_stripe_events_type"), ["type"], unique=False)

    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("locale", sa.String(length=35), nullable=True),
        sa.Column("tier", sa.String(length=32), nullable=False),
        sa.Column("trial_ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_subscription_id", sa.String(length=255), nullable=True),
        sa.Column("subscription_status", sa.String(length=32), nullable=True),
        sa.Column("subscription_price_id", sa.String(length=255), nullable=True),
        sa.Column("subscription_period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("subscription_event_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("credits_available", sa.Integer(), nullable=False),
        sa.Column("credits_next_expiry", sa.DateTime(timezone=True), nullable=True),
        sa.Column("allowance_period_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("credits_available >= 0", name=op.f("ck_users_credits_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
        sa.UniqueConstraint("external_id", name=op.f("uq_users_external_id")),
        sa.UniqueConstraint("stripe_customer_id", name=op.f("uq_users_stripe_customer_id")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_users_stripe_subscription_id"), ["stripe_subscription_id"], unique=False
        )
        batch_op.create_index("ix_users_tier_id", ["tier", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_users_trial_ends_at"), ["trial_ends_at"], unique=False)

    op.create_table(
        "webhook_signature_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=255), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_signature_failures")),
    )
    with op.batch_alter_table("webhook_signature_failures", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_webhook_signature_failures_received_at"), ["received_at"], unique=False
        )

    op.create_table(
        "analytics_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=128), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=255), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_analytics_events_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_analytics_events")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_analytics_events_dedupe_key")),
    )
    with op.batch_alter_table("analytics_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_analytics_events_name_occurred_at", ["name", "occurred_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_analytics_events_occurred_at"), ["occurred_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_analytics_events_session_id"), ["session_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_analytics_events_user_id"), ["user_id"], unique=False)

    op.create_table(
        "payments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("stripe_object_id", sa.String(length=255), nullable=False),
        sa.Column("stripe_payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_charge_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_invoice_id", sa.String(length=255), nullable=True),
        sa.Column("pack_code", sa.String(length=64), nullable=True),
        sa.Column("tier_code", sa.String(length=32), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("amount_refunded", sa.BigInteger(), nullable=False),
        sa.Column("credits_granted", sa.Integer(), nullable=False),
        sa.Column("credits_revoked", sa.Integer(), nullable=False),
        sa.Column("credits_unrecovered", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_payments_amount_not_negative")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_payments_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        sa.UniqueConstraint("stripe_object_id", name=op.f("uq_payments_stripe_object_id")),
    )
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_payments_created_at"), ["created_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_payments_stripe_charge_id"), ["stripe_charge_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_payments_stripe_invoice_id"), ["stripe_invoice_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_payments_stripe_payment_intent_id"),
            ["stripe_payment_intent_id"],
            unique=False,
        )
        batch_op.create_index("ix_payments_user_id_id", ["user_id", "id"], unique=False)

    op.create_table(
        "tier_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("from_tier", sa.String(length=32), nullable=False),
        sa.Column("to_tier", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_tier_changes_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tier_changes")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_tier_changes_idempotency_key")),
    )
    with op.batch_alter_table("tier_changes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_tier_changes_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_tier_changes_request_id"), ["request_id"], unique=False
        )
        batch_op.create_index("ix_tier_changes_user_id_id", ["user_id", "id"], unique=False)

    op.create_table(
        "credit_grants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("remaining", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("is_purchased", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("payment_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_credit_grants_amount_positive")),
        sa.CheckConstraint(
            "remaining >= 0 AND remaining <= amount",
            name=op.f("ck_credit_grants_remaining_in_range"),
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_credit_grants_payment_id_payments")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_credit_grants_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_grants")),
    )
    with op.batch_alter_table("credit_grants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_credit_grants_payment_id"), ["payment_id"], unique=False
        )
        batch_op.create_index(
            "ix_credit_grants_user_id_remaining", ["user_id", "remaining"], unique=False
        )

    op.create_table(
        "credit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("balance_after", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("grant_id", sa.Integer(), nullable=True),
        sa.Column("payment_id", sa.Integer(), nullable=True),
        sa.Column("allocations", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["grant_id"], ["credit_grants.id"], name=op.f("fk_credit_events_grant_id_credit_grants")
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_credit_events_payment_id_payments")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_credit_events_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_events")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_credit_events_idempotency_key")),
    )
    with op.batch_alter_table("credit_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_credit_events_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_credit_events_grant_id"), ["grant_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_credit_events_payment_id"), ["payment_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_credit_events_request_id"), ["request_id"], unique=False
        )
        batch_op.create_index("ix_credit_events_user_id_id", ["user_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("credit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_credit_events_user_id_id")
        batch_op.drop_index(batch_op.f("ix_credit_events_request_id"))
        batch_op.drop_index(batch_op.f("ix_credit_events_payment_id"))
        batch_op.drop_index(batch_op.f("ix_credit_events_grant_id"))
        batch_op.drop_index(batch_op.f("ix_credit_events_created_at"))

    op.drop_table("credit_events")
    with op.batch_alter_table("credit_grants", schema=None) as batch_op:
        batch_op.drop_index("ix_credit_grants_user_id_remaining")
        batch_op.drop_index(batch_op.f("ix_credit_grants_payment_id"))

    op.drop_table("credit_grants")
    with op.batch_alter_table("tier_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_tier_changes_user_id_id")
        batch_op.drop_index(batch_op.f("ix_tier_changes_request_id"))
        batch_op.drop_index(batch_op.f("ix_tier_changes_created_at"))

    op.drop_table("tier_changes")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_index("ix_payments_user_id_id")
        batch_op.drop_index(batch_op.f("ix_payments_stripe_payment_intent_id"))
        batch_op.drop_index(batch_op.f("ix_payments_stripe_invoice_id"))
        batch_op.drop_index(batch_op.f("ix_payments_stripe_charge_id"))
        batch_op.drop_index(batch_op.f("ix_payments_created_at"))

    op.drop_table("payments")
    with op.batch_alter_table("analytics_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_analytics_events_user_id"))
        batch_op.drop_index(batch_op.f("ix_analytics_events_session_id"))
        batch_op.drop_index(batch_op.f("ix_analytics_events_occurred_at"))
        batch_op.drop_index("ix_analytics_events_name_occurred_at")

    op.drop_table("analytics_events")
    with op.batch_alter_table("webhook_signature_failures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_signature_failures_received_at"))

    op.drop_table("webhook_signature_failures")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_trial_ends_at"))
        batch_op.drop_index("ix_users_tier_id")
        batch_op.drop_index(batch_op.f("ix_users_stripe_subscription_id"))

    op.drop_table("users")
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stripe_events_type"))
        batch_op.drop_index(batch_op.f("ix_stripe_events_stripe_object_id"))
        batch_op.drop_index(batch_op.f("ix_stripe_events_stripe_customer_id"))
        batch_op.drop_index("ix_stripe_events_status_received_at")
        batch_op.drop_index(batch_op.f("ix_stripe_events_request_id"))

    op.drop_table("stripe_events")
    op.drop_table("api_keys")

"""Credit holds: reserve before an AI call, settle after; spend_credits learns about holds.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 10:00:00

A hold takes credits out of `users.credits_available` into `users.credits_held` (and off its
grants' remaining amounts, recorded in the hold's allocations). spend_credits changes in two
ways: a ledger event's balance_after is what the user owns (available + held), and a hold past
its expiry makes it answer 'fallback' so the Python path releases the hold first. Its result
gains the two new user columns, so it is dropped and created again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DROP_SPEND_CREDITS = (
    "DROP FUNCTION IF EXISTS spend_credits(integer, integer, varchar, varchar, varchar, varchar,"
    " varchar, varchar, timestamptz, timestamptz)"
)
SPEND_CREDITS_WITH_HOLDS = """
CREATE OR REPLACE FUNCTION spend_credits(
    p_user_id integer,
    p_amount integer,
    p_reason varchar,
    p_source varchar,
    p_actor varchar,
    p_request_id varchar,
    p_key varchar,
    p_fingerprint varchar,
    p_now timestamptz,
    p_period_start timestamptz
) RETURNS TABLE (
    o_outcome text,
    o_event_id integer,
    o_allocations json,
    u_id integer,
    u_email varchar,
    u_external_id varchar,
    u_locale varchar,
    u_tier varchar,
    u_trial_ends_at timestamptz,
    u_stripe_customer_id varchar,
    u_stripe_subscription_id varchar,
    u_subscription_status varchar,
    u_subscription_price_id varchar,
    u_subscription_period_end timestamptz,
    u_subscription_event_at timestamptz,
    u_credits_available integer,
    u_credits_next_expiry timestamptz,
    u_allowance_period_start timestamptz,
    u_created_at timestamptz,
    u_updated_at timestamptz,
    u_credits_held integer,
    u_holds_next_expiry timestamptz
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    u users%ROWTYPE;
    g record;
    v_left integer := p_amount;
    v_take integer;
    v_alloc jsonb := '[]'::jsonb;
    v_event integer;
    v_outcome text := 'spent';
BEGIN
    -- The user row first, as every change does: concurrent spends of one balance take turns.
    SELECT * INTO u FROM users WHERE users.id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, NULL::integer, NULL::json, NULL::integer,
            NULL::varchar, NULL::varchar, NULL::varchar, NULL::varchar, NULL::timestamptz,
            NULL::varchar, NULL::varchar, NULL::varchar, NULL::varchar, NULL::timestamptz,
            NULL::timestamptz, NULL::integer, NULL::timestamptz, NULL::timestamptz,
            NULL::timestamptz, NULL::timestamptz, NULL::integer, NULL::timestamptz;
        RETURN;
    END IF;
    IF (p_key IS NOT NULL AND (
            EXISTS (SELECT 1 FROM credit_events WHERE credit_events.idempotency_key = p_key)
            OR EXISTS (SELECT 1 FROM tier_changes WHERE tier_changes.idempotency_key = p_key)))
        OR (u.credits_next_expiry IS NOT NULL AND u.credits_next_expiry <= p_now)
        OR (u.holds_next_expiry IS NOT NULL AND u.holds_next_expiry <= p_now)
        OR u.allowance_period_start IS DISTINCT FROM p_period_start THEN
        -- A replay, a conflict, an expiry (of a grant or a hold) or an allowance:
        -- the gateway's Python path decides.
        v_outcome := 'fallback';
    ELSIF u.credits_available < p_amount THEN
        v_outcome := 'insufficient';
    ELSE
        -- The burn order: soonest expiry first (no expiry last), free before purchased, oldest.
        FOR g IN
            SELECT credit_grants.id, credit_grants.remaining FROM credit_grants
            WHERE credit_grants.user_id = u.id AND credit_grants.remaining > 0
            ORDER BY credit_grants.expires_at ASC NULLS LAST, credit_grants.is_purchased,
                credit_grants.created_at, credit_grants.id
        LOOP
            EXIT WHEN v_left = 0;
            v_take := least(v_left, g.remaining);
            UPDATE credit_grants SET remaining = credit_grants.remaining - v_take
                WHERE credit_grants.id = g.id;
            v_alloc := v_alloc || jsonb_build_array(jsonb_build_array(g.id, v_take));
            v_left := v_left - v_take;
        END LOOP;
        IF v_left > 0 THEN
            RAISE EXCEPTION 'user %: balance % exceeds its grants', u.id, u.credits_available;
        END IF;
        UPDATE users SET
            credits_available = users.credits_available - p_amount,
            updated_at = p_now,
            credits_next_expiry = (
                SELECT min(credit_grants.expires_at) FROM credit_grants
                WHERE credit_grants.user_id = u.id AND credit_grants.remaining > 0
                    AND credit_grants.expires_at > p_now)
            WHERE users.id = u.id
            RETURNING * INTO u;
        INSERT INTO credit_events (user_id, kind, amount, balance_after, reason, source, actor,
                request_id, idempotency_key, fingerprint, allocations, created_at)
            VALUES (u.id, 'consume', -p_amount, u.credits_available + u.credits_held, p_reason,
                p_source, p_actor, p_request_id, p_key, p_fingerprint, v_alloc::json, p_now)
            RETURNING credit_events.id INTO v_event;
    END IF;
    RETURN QUERY SELECT v_outcome, v_event, v_alloc::json, u.id, u.email, u.external_id,
        u.locale, u.tier, u.trial_ends_at, u.stripe_customer_id, u.stripe_subscription_id,
        u.subscription_status, u.subscription_price_id, u.subscription_period_end,
        u.subscription_event_at, u.credits_available, u.credits_next_expiry,
        u.allowance_period_start, u.created_at, u.updated_at, u.credits_held,
        u.holds_next_expiry;
END;
$$
"""
# Revision 0002's function, restored on downgrade.
SPEND_CREDITS_WITHOUT_HOLDS = """
CREATE OR REPLACE FUNCTION spend_credits(
    p_user_id integer,
    p_amount integer,
    p_reason varchar,
    p_source varchar,
    p_actor varchar,
    p_request_id varchar,
    p_key varchar,
    p_fingerprint varchar,
    p_now timestamptz,
    p_period_start timestamptz
) RETURNS TABLE (
    o_outcome text,
    o_event_id integer,
    o_allocations json,
    u_id integer,
    u_email varchar,
    u_external_id varchar,
    u_locale varchar,
    u_tier varchar,
    u_trial_ends_at timestamptz,
    u_stripe_customer_id varchar,
    u_stripe_subscription_id varchar,
    u_subscription_status varchar,
    u_subscription_price_id varchar,
    u_subscription_period_end timestamptz,
    u_subscription_event_at timestamptz,
    u_credits_available integer,
    u_credits_next_expiry timestamptz,
    u_allowance_period_start timestamptz,
    u_created_at timestamptz,
    u_updated_at timestamptz
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    u users%ROWTYPE;
    g record;
    v_left integer := p_amount;
    v_take integer;
    v_alloc jsonb := '[]'::jsonb;
    v_event integer;
    v_outcome text := 'spent';
BEGIN
    -- The user row first, as every change does: concurrent spends of one balance take turns.
    SELECT * INTO u FROM users WHERE users.id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, NULL::integer, NULL::json, NULL::integer,
            NULL::varchar, NULL::varchar, NULL::varchar, NULL::varchar, NULL::timestamptz,
            NULL::varchar, NULL::varchar, NULL::varchar, NULL::varchar, NULL::timestamptz,
            NULL::timestamptz, NULL::integer, NULL::timestamptz, NULL::timestamptz,
            NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    IF (p_key IS NOT NULL AND (
            EXISTS (SELECT 1 FROM credit_events WHERE credit_events.idempotency_key = p_key)
            OR EXISTS (SELECT 1 FROM tier_changes WHERE tier_changes.idempotency_key = p_key)))
        OR (u.credits_next_expiry IS NOT NULL AND u.credits_next_expiry <= p_now)
        OR u.allowance_period_start IS DISTINCT FROM p_period_start THEN
        -- A replay, a conflict, an expiry or an allowance: the gateway's Python path decides.
        v_outcome := 'fallback';
    ELSIF u.credits_available < p_amount THEN
        v_outcome := 'insufficient';
    ELSE
        -- The burn order: soonest expiry first (no expiry last), free before purchased, oldest.
        FOR g IN
            SELECT credit_grants.id, credit_grants.remaining FROM credit_grants
            WHERE credit_grants.user_id = u.id AND credit_grants.remaining > 0
            ORDER BY credit_grants.expires_at ASC NULLS LAST, credit_grants.is_purchased,
                credit_grants.created_at, credit_grants.id
        LOOP
            EXIT WHEN v_left = 0;
            v_take := least(v_left, g.remaining);
            UPDATE credit_grants SET remaining = credit_grants.remaining - v_take
                WHERE credit_grants.id = g.id;
            v_alloc := v_alloc || jsonb_build_array(jsonb_build_array(g.id, v_take));
            v_left := v_left - v_take;
        END LOOP;
        IF v_left > 0 THEN
            RAISE EXCEPTION 'user %: balance % exceeds its grants', u.id, u.credits_available;
        END IF;
        UPDATE users SET
            credits_available = users.credits_available - p_amount,
            updated_at = p_now,
            credits_next_expiry = (
                SELECT min(credit_grants.expires_at) FROM credit_grants
                WHERE credit_grants.user_id = u.id AND credit_grants.remaining > 0
                    AND credit_grants.expires_at > p_now)
            WHERE users.id = u.id
            RETURNING * INTO u;
        INSERT INTO credit_events (user_id, kind, amount, balance_after, reason, source, actor,
                request_id, idempotency_key, fingerprint, allocations, created_at)
            VALUES (u.id, 'consume', -p_amount, u.credits_available, p_reason, p_source, p_actor,
                p_request_id, p_key, p_fingerprint, v_alloc::json, p_now)
            RETURNING credit_events.id INTO v_event;
    END IF;
    RETURN QUERY SELECT v_outcome, v_event, v_alloc::json, u.id, u.email, u.external_id,
        u.locale, u.tier, u.trial_ends_at, u.stripe_customer_id, u.stripe_subscription_id,
        u.subscription_status, u.subscription_price_id, u.subscription_period_end,
        u.subscription_event_at, u.credits_available, u.credits_next_expiry,
        u.allowance_period_start, u.created_at, u.updated_at;
END;
$$
"""


def upgrade() -> None:
    op.create_table(
        "credit_holds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("allocations", sa.JSON(), nullable=False),
        sa.Column("settled_amount", sa.Integer(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("amount > 0", name=op.f("ck_credit_holds_amount_positive")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_credit_holds_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_holds")),
    )
    with op.batch_alter_table("credit_holds", schema=None) as batch_op:
        batch_op.create_index("ix_credit_holds_user_id_status", ["user_id", "status"])
        batch_op.create_index("ix_credit_holds_status_expires_at", ["status", "expires_at"])
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("credits_held", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("holds_next_expiry", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.create_check_constraint(op.f("ck_users_held_not_negative"), "credits_held >= 0")
    with op.batch_alter_table("credit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hold_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_credit_events_hold_id_credit_holds"), "credit_holds", ["hold_id"], ["id"]
        )
        batch_op.create_index(batch_op.f("ix_credit_events_hold_id"), ["hold_id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DROP_SPEND_CREDITS)
        op.execute(SPEND_CREDITS_WITH_HOLDS)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DROP_SPEND_CREDITS)
        op.execute(SPEND_CREDITS_WITHOUT_HOLDS)
    with op.batch_alter_table("credit_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_credit_events_hold_id"))
        batch_op.drop_constraint(
            batch_op.f("fk_credit_events_hold_id_credit_holds"), type_="foreignkey"
        )
        batch_op.drop_column("hold_id")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_users_held_not_negative"), type_="check")
        batch_op.drop_column("holds_next_expiry")
        batch_op.drop_column("credits_held")
    with op.batch_alter_table("credit_holds", schema=None) as batch_op:
        batch_op.drop_index("ix_credit_holds_status_expires_at")
        batch_op.drop_index("ix_credit_holds_user_id_status")
    op.drop_table("credit_holds")

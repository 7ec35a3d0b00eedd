"""spend_credits sees every kind of change's idempotency keys: one key space.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 10:00:00

Until now the function answered 'fallback' for a key used by a ledger event or a tier change
only; a key first used by `recordUsage` or an override let a spend go through under it. It now
looks in usage_events and entitlement_overrides too, after the user row's lock as before, so
the Python path answers the IdempotencyConflict. Same signature and result: CREATE OR REPLACE.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SPEND_CREDITS_ONE_KEY_SPACE = """CREATE OR REPLACE FUNCTION spend_credits(
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
    -- One key space (resolvers/ledger/idempotency.py): a key any kind of change used first.
    IF (p_key IS NOT NULL AND (
            EXISTS (SELECT 1 FROM credit_events WHERE credit_events.idempotency_key = p_key)
            OR EXISTS (SELECT 1 FROM tier_changes WHERE tier_changes.idempotency_key = p_key)
            OR EXISTS (SELECT 1 FROM usage_events WHERE usage_events.idempotency_key = p_key)
            OR EXISTS (SELECT 1 FROM entitlement_overrides
                WHERE entitlement_overrides.idempotency_key = p_key)))
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


def _previous_function() -> str:
    """Revision 0003's function, which downgrade restores (revisions are never edited)."""
    path = Path(__file__).with_name("0003_credit_holds.py")
    spec = importlib.util.spec_from_file_location("revision_0003", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.SPEND_CREDITS_WITH_HOLDS)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(SPEND_CREDITS_ONE_KEY_SPACE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_previous_function())

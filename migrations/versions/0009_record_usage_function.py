"""PostgreSQL function record_usage: a plain recordUsage in one round trip.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 19:00:00

The same rule as resolvers/entitlements/usage.py:record_usage for the common case, with the
entitlement computed as resolvers/entitlements/access.py does (the tier's rule, the counting
period: the Stripe billing period for subscribers, the calendar month UTC otherwise, a count of
an older period read as 0, a newer stored period kept). What the catalog knows comes in
`p_rules` (JSON, built once per catalog and feature by resolvers/entitlements/counting.py); the
calendar month's start comes from the caller's clock. Any other case (a used key, an override of
the feature, a tier the catalog lacks, a stored count it cannot read) answers 'fallback' and the
gateway runs its Python rule. The user row is locked first, as by every change; each statement
of a plpgsql function takes a fresh snapshot (READ COMMITTED), so the key is looked up after the
lock is granted. tests/resolvers/test_usage_differential.py drives both with the same random
histories and requires identical results, usage and usage records. SQLite has no functions:
nothing is done there.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RECORD_USAGE = """CREATE OR REPLACE FUNCTION record_usage(
    p_user_id integer,
    p_feature varchar,
    p_quantity integer,
    p_rules text,
    p_source varchar,
    p_actor varchar,
    p_request_id varchar,
    p_key varchar,
    p_fingerprint varchar,
    p_now timestamptz,
    p_month_start timestamptz
) RETURNS TABLE (
    o_outcome text,
    o_event_id integer,
    o_limit integer,
    o_usage integer,
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
    u_entitlement_usage json,
    u_entitlement_overrides json,
    u_created_at timestamptz,
    u_updated_at timestamptz,
    u_credits_held integer,
    u_holds_next_expiry timestamptz
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    u users%ROWTYPE;
    v_rules jsonb := p_rules::jsonb;
    v_rule jsonb;
    v_counted jsonb;
    v_period text := 'total';
    v_anchor timestamp;
    v_months integer;
    v_has_access boolean;
    v_used integer := 0;
    v_after integer;
BEGIN
    -- The user row first, as every change does: concurrent counts of one user take turns.
    SELECT * INTO u FROM users WHERE users.id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        o_outcome := 'not_found';
        RETURN NEXT;
        RETURN;
    END IF;
    v_rule := v_rules -> 'tiers' -> u.tier;
    IF json_typeof(u.entitlement_usage) = 'object' THEN
        v_counted := u.entitlement_usage::jsonb -> p_feature;
    END IF;
    -- One key space (resolvers/ledger/idempotency.py): a key any kind of change used first is
    -- a replay or a conflict. An override, a tier the catalog does not name, or a stored
    -- count this function cannot read: the Python rule decides all of these.
    IF (p_key IS NOT NULL AND (
            EXISTS (SELECT 1 FROM credit_events WHERE credit_events.idempotency_key = p_key)
            OR EXISTS (SELECT 1 FROM tier_changes WHERE tier_changes.idempotency_key = p_key)
            OR EXISTS (SELECT 1 FROM usage_events WHERE usage_events.idempotency_key = p_key)
            OR EXISTS (SELECT 1 FROM entitlement_overrides
                WHERE entitlement_overrides.idempotency_key = p_key)))
        OR (json_typeof(u.entitlement_overrides) = 'object'
            AND u.entitlement_overrides -> p_feature IS NOT NULL)
        OR v_rule IS NULL
        OR (v_counted IS NOT NULL AND NOT (jsonb_typeof(v_counted) = 'object'
            AND jsonb_typeof(v_counted -> 'period') = 'string'
            AND coalesce(v_counted ->> 'used', '') ~ '^[0-9]{1,9}$'
            AND (v_counted ->> 'period' = 'total'
                OR v_counted ->> 'period'
                    ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$')))
    THEN
        o_outcome := 'fallback';
        RETURN NEXT;
        RETURN;
    END IF;
    IF (v_rules ->> 'metered')::boolean THEN
        IF u.subscription_period_end IS NOT NULL AND coalesce(u.stripe_subscription_id, '') <> ''
                AND u.subscription_status IN (
                    SELECT jsonb_array_elements_text(v_rules -> 'paying')) THEN
            -- Stripe's period: whole months from the anchor of the known period end (a 31st
            -- anchor stays at the end of shorter months, as timestamp + months does).
            v_anchor := u.subscription_period_end AT TIME ZONE 'UTC';
            v_months := (extract(year FROM p_now AT TIME ZONE 'UTC')::integer
                    - extract(year FROM v_anchor)::integer) * 12
                + extract(month FROM p_now AT TIME ZONE 'UTC')::integer
                - extract(month FROM v_anchor)::integer;
            WHILE (v_anchor + make_interval(months => v_months)) AT TIME ZONE 'UTC' <= p_now LOOP
                v_months := v_months + 1;
            END LOOP;
            WHILE (v_anchor + make_interval(months => v_months - 1)) AT TIME ZONE 'UTC' > p_now
            LOOP
                v_months := v_months - 1;
            END LOOP;
            v_period := to_char(v_anchor + make_interval(months => v_months - 1),
                'YYYY-MM-DD"T"HH24:MI:SS"Z"');
        ELSE
            v_period := to_char(p_month_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"');
        END IF;
        -- A newer period stored by a process whose clock is ahead is kept, not reset.
        IF v_counted ->> 'period' <> v_period AND v_counted ->> 'period' <> 'total'
                AND (v_counted ->> 'period')::timestamptz > p_now THEN
            v_period := v_counted ->> 'period';
        END IF;
    END IF;
    IF v_counted ->> 'period' = v_period THEN
        v_used := (v_counted ->> 'used')::integer;
    END IF;
    v_has_access := (v_rule ->> 0)::boolean;
    o_limit := CASE WHEN v_has_access THEN (v_rule ->> 1)::integer END;
    o_usage := v_used;
    IF p_quantity > 0 AND NOT v_has_access THEN
        o_outcome := 'no_access';
    ELSIF p_quantity > 0 AND o_limit IS NOT NULL AND v_used + p_quantity > o_limit THEN
        o_outcome := 'limit_exceeded';
    ELSE
        o_outcome := 'recorded';
        v_after := greatest(v_used + p_quantity, 0);
        UPDATE users SET
            entitlement_usage = (
                CASE WHEN json_typeof(users.entitlement_usage) = 'object'
                    THEN users.entitlement_usage::jsonb ELSE '{}'::jsonb END
                || jsonb_build_object(p_feature,
                    jsonb_build_object('period', v_period, 'used', v_after)))::json,
            updated_at = p_now
            WHERE users.id = u.id
            RETURNING * INTO u;
        INSERT INTO usage_events (user_id, feature, period, quantity, used_after, source, actor,
                request_id, idempotency_key, fingerprint, created_at)
            VALUES (u.id, p_feature, v_period, v_after - v_used, v_after, p_source, p_actor,
                p_request_id, p_key, p_fingerprint, p_now)
            RETURNING usage_events.id INTO o_event_id;
    END IF;
    SELECT u.id, u.email, u.external_id, u.locale, u.tier, u.trial_ends_at,
            u.stripe_customer_id, u.stripe_subscription_id, u.subscription_status,
            u.subscription_price_id, u.subscription_period_end, u.subscription_event_at,
            u.credits_available, u.credits_next_expiry, u.allowance_period_start,
            u.entitlement_usage, u.entitlement_overrides, u.created_at, u.updated_at,
            u.credits_held, u.holds_next_expiry
        INTO u_id, u_email, u_external_id, u_locale, u_tier, u_trial_ends_at,
            u_stripe_customer_id, u_stripe_subscription_id, u_subscription_status,
            u_subscription_price_id, u_subscription_period_end, u_subscription_event_at,
            u_credits_available, u_credits_next_expiry, u_allowance_period_start,
            u_entitlement_usage, u_entitlement_overrides, u_created_at, u_updated_at,
            u_credits_held, u_holds_next_expiry;
    RETURN NEXT;
END;
$$"""

DROP_RECORD_USAGE = (
    "DROP FUNCTION IF EXISTS record_usage(integer, varchar, integer, text, varchar, varchar,"
    " varchar, varchar, varchar, timestamptz, timestamptz)"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(RECORD_USAGE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DROP_RECORD_USAGE)

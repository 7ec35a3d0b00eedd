"""The ORM tables: users, ledger, tiers, entitlements, payments, Stripe events, analytics, keys,
the outbox of outgoing webhooks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


MAX_ROW_ID = 2**31 - 1  # ids are 32-bit integers on both databases


def parse_row_id(text: str | int | None) -> int | None:
    """A row id from outside (GraphQL ID, cursor, JWT sub, Stripe metadata), or None.

    ASCII digits only ('²'.isdigit() is true but int('²') fails) and in the column's range,
    so a bad id is "not found", never a database error.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return text if 0 < text <= MAX_ROW_ID else None
    if not isinstance(text, str) or not (text.isascii() and text.isdigit()) or len(text) > 10:
        return None
    value = int(text)
    return value if 0 < value <= MAX_ROW_ID else None


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out; SQLite keeps no offset, so one is put back."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where a UTC time is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("credits_available >= 0", name="credits_not_negative"),
        CheckConstraint("credits_held >= 0", name="held_not_negative"),
        Index("ix_users_tier_id", "tier", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Stored lower-cased: the unique index then makes email unique case-insensitively.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    external_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    locale: Mapped[str | None] = mapped_column(String(35))
    tier: Mapped[str] = mapped_column(String(32))
    trial_ends_at: Mapped[datetime | None] = mapped_column(index=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255), index=True)
    subscription_status: Mapped[str | None] = mapped_column(String(32))
    subscription_price_id: Mapped[str | None] = mapped_column(String(255))
    subscription_period_end: Mapped[datetime | None]
    # Stripe `created` of the last subscription event applied: older ones are ignored.
    subscription_event_at: Mapped[datetime | None]
    # The balance is kept on the row so a read is one lookup, and so every credit change locks
    # this row first: that lock is what serializes concurrent spends of one user.
    credits_available: Mapped[int] = mapped_column(Integer, default=0)
    credits_next_expiry: Mapped[datetime | None]
    allowance_period_start: Mapped[datetime | None]
    # Kept on the row, like the balance, so an entitlement check is the one lookup of the user
    # and recordUsage writes the row it locks: {feature: {"period": key, "used": n}} for the
    # period last counted in (another period reads as 0), and support's overrides as they stand
    # {feature: {"has_access", "limit", "expires_at"}}. The history is in usage_events and
    # entitlement_overrides.
    entitlement_usage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    entitlement_overrides: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Credits on active holds: out of `credits_available`, still the user's until settled.
    credits_held: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The soonest expiry of an active hold, so a write knows without a query whether one is due.
    holds_next_expiry: Mapped[datetime | None]


class CreditGrant(Base):
    __tablename__ = "credit_grants"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("remaining >= 0 AND remaining <= amount", name="remaining_in_range"),
        Index("ix_credit_grants_user_id_remaining", "user_id", "remaining"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    amount: Mapped[int]
    remaining: Mapped[int]
    expires_at: Mapped[datetime | None]
    source: Mapped[str] = mapped_column(String(32))
    # Purchased credits are burnt after free ones (plan allowance, gifts) of the same expiry.
    is_purchased: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(String(500))
    payment_id: Mapped[int | None] = mapped_column(ForeignKey("payments.id"), index=True)
    created_at: Mapped[datetime]


class CreditEvent(Base):
    """The append-only ledger: one row per change of a user's balance."""

    __tablename__ = "credit_events"
    __table_args__ = (Index("ix_credit_events_user_id_id", "user_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int]
    balance_after: Mapped[int]
    reason: Mapped[str] = mapped_column(String(500))
    source: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(128), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    # A digest of the arguments, so a key reused with other arguments is a conflict.
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("credit_grants.id"), index=True)
    payment_id: Mapped[int | None] = mapped_column(ForeignKey("payments.id"), index=True)
    # For spends and take-backs: [[grant_id, credits], ...], which grants paid.
    allocations: Mapped[list[list[int]] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(index=True)
    hold_id: Mapped[int | None] = mapped_column(ForeignKey("credit_holds.id"), index=True)


class CreditHold(Base):
    """Credits reserved for a call priced only after it ends: settled, released or expired."""

    __tablename__ = "credit_holds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        Index("ix_credit_holds_user_id_status", "user_id", "status"),
        Index("ix_credit_holds_status_expires_at", "status", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    amount: Mapped[int]
    reason: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16))  # active | settled | released | expired
    # [[grant_id, credits], ...] taken in the burn order: a release puts them back there.
    allocations: Mapped[list[list[int]]] = mapped_column(JSON)
    settled_amount: Mapped[int | None]
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime]
    # When the credits left the hold; an expired hold's is its expires_at, whenever swept.
    closed_at: Mapped[datetime | None]


class TierChange(Base):
    __tablename__ = "tier_changes"
    __table_args__ = (Index("ix_tier_changes_user_id_id", "user_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    from_tier: Mapped[str] = mapped_column(String(32))
    to_tier: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(500))
    source: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(128), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(index=True)


class UsageEvent(Base):
    """The append-only record of reported usage: one row per counted `recordUsage`."""

    __tablename__ = "usage_events"
    __table_args__ = (Index("ix_usage_events_user_id_id", "user_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    feature: Mapped[str] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(32))
    quantity: Mapped[int]  # signed: negative gives usage back
    used_after: Mapped[int]
    source: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(128), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(index=True)


class EntitlementOverride(Base):
    """Support's overrides of a plan's entitlement, append-only: the newest per feature counts."""

    __tablename__ = "entitlement_overrides"
    __table_args__ = (
        Index("ix_entitlement_overrides_user_id_feature_id", "user_id", "feature", "id"),
        CheckConstraint("usage_limit IS NULL OR usage_limit >= 0", name="limit_not_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    feature: Mapped[str] = mapped_column(String(64))
    has_access: Mapped[bool] = mapped_column(Boolean)
    usage_limit: Mapped[int | None] = mapped_column(Integer)  # None: no limit
    expires_at: Mapped[datetime | None]
    reason: Mapped[str] = mapped_column(String(500))
    source: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(128), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(index=True)


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="amount_not_negative"),
        Index("ix_payments_user_id_id", "user_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))  # credit_pack | subscription
    # The Stripe object the money paid for (checkout session or invoice): one payment each.
    stripe_object_id: Mapped[str] = mapped_column(String(255), unique=True)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255), index=True)
    stripe_charge_id: Mapped[str | None] = mapped_column(String(255), index=True)
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(255), index=True)
    pack_code: Mapped[str | None] = mapped_column(String(64))
    tier_code: Mapped[str | None] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(24))
    amount_refunded: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_granted: Mapped[int] = mapped_column(Integer, default=0)
    credits_revoked: Mapped[int] = mapped_column(Integer, default=0)
    # Credits a refund should have taken back but that were already spent.
    credits_unrecovered: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(index=True)


class StripeEvent(Base):
    __tablename__ = "stripe_events"
    __table_args__ = (Index("ix_stripe_events_status_received_at", "status", "received_at"),)

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(128), index=True)
    created: Mapped[datetime]
    livemode: Mapped[bool] = mapped_column(Boolean, default=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # processed | ignored | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(128), index=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), index=True)
    stripe_object_id: Mapped[str | None] = mapped_column(String(255), index=True)
    received_at: Mapped[datetime]
    processed_at: Mapped[datetime | None]


class WebhookSignatureFailure(Base):
    __tablename__ = "webhook_signature_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reason: Mapped[str] = mapped_column(String(255))
    request_id: Mapped[str | None] = mapped_column(String(128))
    received_at: Mapped[datetime] = mapped_column(index=True)


class AnalyticsEvent(Base):
    __tablename__ = "analytics_events"
    __table_args__ = (Index("ix_analytics_events_name_occurred_at", "name", "occurred_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str | None] = mapped_column(String(128), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    properties: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Set for events recorded once (per session, per payment): the unique index enforces it.
    dedupe_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_id: Mapped[str | None] = mapped_column(String(128))
    occurred_at: Mapped[datetime] = mapped_column(index=True)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    # SHA-256 of the key: keys are 256-bit random, so a slow hash would add nothing.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class OutgoingEvent(Base):
    """The transactional outbox: written in the transaction of the change it tells of."""

    __tablename__ = "outgoing_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # the order events happened in
    message_id: Mapped[str] = mapped_column(String(64), unique=True)  # Standard Webhooks' id
    type: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Set for events sent once per thing (a grant's expiring_soon): the unique index enforces it.
    dedupe_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]


class OutgoingDelivery(Base):
    """One event to one endpoint: pending until the endpoint answers 2xx, failed after 3 days."""

    __tablename__ = "outgoing_deliveries"
    __table_args__ = (
        Index("ix_outgoing_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        # A user's queue per endpoint, in event order: the dispatcher sends only its head.
        Index("ix_outgoing_deliveries_user_id_endpoint_id", "user_id", "endpoint", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("outgoing_events.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    endpoint: Mapped[str] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    last_status: Mapped[int | None] = mapped_column(Integer)  # the endpoint's HTTP status
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class BalanceAlert(Base):
    """Where a user's balance stands against its alerts, so each crossing is told once."""

    __tablename__ = "balance_alerts"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    # Support's per-user threshold for credits.low_balance; null: the tier's from the catalog.
    low_balance_threshold: Mapped[int | None] = mapped_column(Integer)
    is_low: Mapped[bool] = mapped_column(Boolean, default=False)
    is_depleted: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime]


class OutboxLease(Base):
    """Who dispatches, on SQLite (PostgreSQL: an advisory lock): taken until expires_at."""

    __tablename__ = "outbox_leases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime | None]


class LiveWatch(Base):
    """A user some process's live subscription watches: the triggers notify only for these.

    `listener_pid` is the backend pid of that process's LISTEN connection (gateway.live.watches).
    """

    __tablename__ = "live_watches"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    listener_pid: Mapped[int] = mapped_column(Integer, primary_key=True)

"""Support's overrides of a plan's entitlement: they win over the tier, may expire, are audited."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.catalog import Catalog
from resolvers.changes import record_change
from resolvers.entitlements import Entitlement, entitlement_of, entitlement_states
from resolvers.errors import IdempotencyConflict, InvalidInput, UnknownFeature, UserNotFound
from resolvers.ledger import Actor, check_change_args, find_keyed_event, fingerprint
from resolvers.models import EntitlementOverride, User
from resolvers.usage import MAX_QUANTITY, check_feature
from resolvers.users import UserRef, find_user


@dataclass(frozen=True)
class OverrideSet:
    user: User
    override: EntitlementOverride
    entitlement: Entitlement  # as it stands with the override
    replayed: bool = False


async def set_entitlement_override(
    session: AsyncSession,
    *,
    user: UserRef,
    feature: str,
    has_access: bool,
    limit: int | None,
    reason: str,
    actor: Actor,
    now: datetime,
    catalog: Catalog,
    expires_at: datetime | None = None,
    idempotency_key: str | None = None,
) -> OverrideSet | UnknownFeature | UserNotFound | InvalidInput | IdempotencyConflict:
    """Give or take away a feature, or set its limit (None: no limit), until `expires_at`.

    The newest override of a feature is the one that counts; earlier ones stay as history.
    """
    if failure := check_change_args(reason=reason, actor=actor, idempotency_key=idempotency_key):
        return failure
    if failure := check_feature(catalog, feature):
        return failure
    if limit is not None and (isinstance(limit, bool) or not 0 <= limit <= MAX_QUANTITY):
        return InvalidInput(field="limit", reason=f"must be 0 to {MAX_QUANTITY:,}")
    if limit is not None and not has_access:
        return InvalidInput(field="limit", reason="a limit needs hasAccess: true")
    row = await find_user(session, user, lock=True)
    if row is None:
        return user.not_found()
    digest = fingerprint(
        "override",
        user=row.id,
        feature=feature,
        has_access=has_access,
        limit=limit,
        expires_at=expires_at,
        reason=reason,
    )
    if idempotency_key is not None:
        kept = (
            await session.execute(
                select(EntitlementOverride).where(
                    EntitlementOverride.idempotency_key == idempotency_key
                )
            )
        ).scalar_one_or_none()
        if kept is not None and kept.fingerprint != digest:
            return IdempotencyConflict(idempotency_key=idempotency_key)
        if kept is not None:
            return OverrideSet(
                user=row,
                override=kept,
                entitlement=await _current(session, row, feature, catalog, now),
                replayed=True,
            )
        # One key names one operation: a key a credit, tier or usage change used is taken.
        if await find_keyed_event(session, idempotency_key, digest) is not None:
            return IdempotencyConflict(idempotency_key=idempotency_key)
    # Only after the replay check: a retry after the expiry passed answers its first result.
    if expires_at is not None and expires_at.tzinfo is None:
        return InvalidInput(field="expiresAt", reason="needs a time zone, e.g. Z or +01:00")
    if expires_at is not None and expires_at <= now:
        return InvalidInput(field="expiresAt", reason="must be in the future")
    override = EntitlementOverride(
        user_id=row.id,
        feature=feature,
        has_access=has_access,
        usage_limit=limit,
        expires_at=expires_at,
        reason=reason,
        source=actor.source,
        actor=actor.name,
        request_id=actor.request_id,
        idempotency_key=idempotency_key,
        fingerprint=digest,
        created_at=now,
    )
    session.add(override)
    await session.flush()
    record_change(
        session,
        action="entitlement_override_set",
        request_id=actor.request_id,
        user_id=row.id,
        email=row.email,
        feature=feature,
        has_access=has_access,
        limit=limit,
        expires_at=expires_at.isoformat() if expires_at else None,
        reason=reason,
        source=actor.source,
        actor=actor.name,
    )
    return OverrideSet(
        user=row,
        override=override,
        entitlement=await _current(session, row, feature, catalog, now),
    )


async def _current(
    session: AsyncSession, row: User, feature: str, catalog: Catalog, now: datetime
) -> Entitlement:
    state = (await entitlement_states(session, [row.id], now=now))[0]
    return entitlement_of(catalog, row, feature, state, now)

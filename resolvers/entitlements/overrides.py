"""Support's overrides of a plan's entitlement: they win over the tier, may expire, are audited."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.catalog.model import Catalog
from resolvers.entitlements.access import Entitlement, entitlement_of
from resolvers.entitlements.usage import MAX_QUANTITY, check_feature
from resolvers.errors import IdempotencyConflict, InvalidInput, UnknownFeature, UserNotFound
from resolvers.ledger.changes import record_change
from resolvers.ledger.entries import Actor, check_change_args
from resolvers.ledger.idempotency import KeyKind, earlier_use, find_key_use, fingerprint, lock_key
from resolvers.models import EntitlementOverride, User
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
    await lock_key(session, idempotency_key)  # the key's lock first, then the row's
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
    used = earlier_use(
        await find_key_use(session, idempotency_key),
        key=idempotency_key,
        kind=KeyKind.OVERRIDE,
        digest=digest,
    )
    if isinstance(used, IdempotencyConflict):
        return used
    if used is not None:
        kept = await session.get(EntitlementOverride, used)
        assert kept is not None, "the row the key lookup found"
        entitlement = entitlement_of(catalog, row, feature, now)
        return OverrideSet(user=row, override=kept, entitlement=entitlement, replayed=True)
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
    # As it stands on the row, where checks read it; a new dict so the ORM sees the change.
    row.entitlement_overrides = {
        **(row.entitlement_overrides or {}),
        feature: {
            "has_access": has_access,
            "limit": limit,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    }
    row.updated_at = now
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
        entitlement=entitlement_of(catalog, row, feature, now),
    )

"""The `entitlement_change` records: collected during a transaction, logged once it commits."""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.models import CreditEvent, EntitlementOverride, TierChange

_PENDING = "entitlement_changes"


class Queue(Protocol):
    """Where a change's lines wait for its commit: a session, or a change made alone
    (resolvers.ledger.statements.OnDriver)."""

    @property
    def info(self) -> dict[Any, Any]: ...


def record_change(session: Queue, *, action: str, **fields: Any) -> None:
    """Queue one `entitlement_change` line; the unit of work logs it after a successful commit."""
    session.info.setdefault(_PENDING, []).append({"action": action, **fields})


def changed_user_ids(changes: list[dict[str, Any]]) -> list[int]:
    """The users some changes touch, in first-touched order."""
    return list(dict.fromkeys(c["user_id"] for c in changes if c.get("user_id") is not None))


def take_changes(session: Queue) -> list[dict[str, Any]]:
    """The changes queued in this session, removed from it (called after commit or rollback)."""
    return session.info.pop(_PENDING, [])


async def changes_by_request_id(
    session: AsyncSession, request_id: str
) -> list[CreditEvent | TierChange | EntitlementOverride]:
    """Every ledger event, tier change and override written under one X-Request-ID, oldest first."""
    events = (
        await session.execute(select(CreditEvent).where(CreditEvent.request_id == request_id))
    ).scalars()
    tiers = (
        await session.execute(select(TierChange).where(TierChange.request_id == request_id))
    ).scalars()
    overrides = (
        await session.execute(
            select(EntitlementOverride).where(EntitlementOverride.request_id == request_id)
        )
    ).scalars()
    return sorted([*events, *tiers, *overrides], key=lambda row: (row.created_at, row.id))

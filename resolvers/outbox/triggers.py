"""From a transaction's queued changes to its outgoing events, written just before it commits.

The unit of work calls `write_outgoing_events` with the `entitlement_change` records the
transaction queued (resolvers.ledger.changes): the events then commit with the change, or not
at all, and no ledger code has to know that events exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.catalog.model import Catalog
from resolvers.outbox.alerts import BalanceNow, check_balance_alerts
from resolvers.outbox.events import EventType, OutboxConfig, enqueue_event


async def write_outgoing_events(
    session: AsyncSession,
    changes: Sequence[dict[str, Any]],
    *,
    config: OutboxConfig,
    catalog: Catalog,
    now: datetime,
) -> None:
    """Queue the events `changes` cause, in the order they happened, in the open transaction."""
    if not config.is_enabled or not changes:
        return
    balances: dict[int, BalanceNow] = {}
    for change in changes:
        found = _event_of(change)
        if found is not None:
            type, data = found
            await enqueue_event(
                session,
                config=config,
                type=type,
                user={"id": change["user_id"], "email": change["email"]},
                data=data,
                now=now,
                request_id=change.get("request_id"),
            )
        if "balance_after" in change:
            # The last change of a user in the transaction has the balance it commits.
            balances[change["user_id"]] = BalanceNow(
                user_id=change["user_id"],
                email=change["email"],
                available=change["balance_after"] - change["held"],
                request_id=change.get("request_id"),
            )
    for balance in balances.values():
        await check_balance_alerts(session, balance, config=config, catalog=catalog, now=now)


def _event_of(change: dict[str, Any]) -> tuple[EventType, dict[str, Any]] | None:
    """The event one change is on its own, if any (balance alerts look at the transaction)."""
    action = change["action"]
    if action == "hold_expired":
        return EventType.HOLD_EXPIRED, {
            "holdId": str(change["hold_id"]),
            "available": change["balance_after"] - change["held"],
        }
    from_tier, to_tier = change.get("from_tier"), change.get("to_tier")
    if from_tier is not None and to_tier is not None and from_tier != to_tier:
        return EventType.TIER_CHANGED, {
            "fromTier": from_tier,
            "toTier": to_tier,
            "reason": change.get("reason"),
            "source": change.get("source"),
        }
    if action == "usage_recorded" and change.get("limit") is not None:
        limit, after = change["limit"], change["usage_after"]
        if after - change["quantity"] < limit <= after:
            return EventType.LIMIT_REACHED, {
                "feature": change["feature"],
                "limit": limit,
                "usage": after,
            }
    return None

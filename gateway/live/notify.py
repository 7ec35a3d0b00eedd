"""Hearing which users a committed transaction changed, on every gateway process.

On PostgreSQL, triggers (migration 0007) send a NOTIFY from the changing transaction, delivered
when, and only when, it commits, and since migration 0008 only for a user some process watches
(gateway.live.watches); each process hears it on its one LISTEN connection (gateway.listener).
SQLite has no such thing: its processes poll the ledger position instead (gateway.live.feed).
"""

from __future__ import annotations

# The channel migration 0007's triggers notify on; the payload is the changed user's id.
CHANGES_CHANNEL = "entitlements_changed"


def parse_payload(payload: str) -> list[int]:
    """The user ids of a payload; anything else on the channel is ignored."""
    return [int(part) for part in payload.split(",") if part.isdigit()]

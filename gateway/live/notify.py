"""Telling every gateway process which users a transaction changed, once it commits.

On PostgreSQL a NOTIFY sent inside the changing transaction is delivered when, and only when,
it commits; each process hears it on its one LISTEN connection (gateway.listener). SQLite has no
such thing: its processes poll the ledger position instead (gateway.live.feed).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

CHANGES_CHANNEL = "entitlements_changed"
# PostgreSQL refuses a payload of 8000 bytes or more; user ids are sent in chunks below that.
MAX_PAYLOAD_BYTES = 7000
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def payloads(user_ids: list[int]) -> list[str]:
    """The user ids as comma-separated payloads, each under PostgreSQL's limit."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for user_id in user_ids:
        part = str(user_id)
        if current and size + len(part) + 1 > MAX_PAYLOAD_BYTES:
            chunks.append(",".join(current))
            current, size = [], 0
        current.append(part)
        size += len(part) + 1
    if current:
        chunks.append(",".join(current))
    return chunks


async def notify_changes(session: AsyncSession, user_ids: list[int]) -> None:
    """Queue the NOTIFY in the session's transaction (PostgreSQL)."""
    for payload in payloads(user_ids):
        await session.execute(_NOTIFY, {"channel": CHANGES_CHANNEL, "payload": payload})


def parse_payload(payload: str) -> list[int]:
    """The user ids of a payload; anything else on the channel is ignored."""
    return [int(part) for part in payload.split(",") if part.isdigit()]

"""entitlements deliveries: outgoing webhook deliveries, listed and sent again."""

from __future__ import annotations

from typing import Any

import click

from gateway.cli.command import echo_json, fail, sync
from gateway.runtime import Runtime
from resolvers.errors import DeliveryNotFound
from resolvers.models import parse_row_id
from resolvers.outbox import deliveries
from resolvers.outbox.deliveries import DeliveryRow, DeliveryStatus


@click.group("deliveries")
def deliveries_group() -> None:
    """Outgoing webhooks (OUTGOING_WEBHOOK_URLS): one delivery per event and endpoint."""


def describe_delivery(row: DeliveryRow) -> dict[str, Any]:
    d, e = row.delivery, row.event
    return {
        "id": d.id,
        "message_id": e.message_id,
        "type": e.type,
        "user_id": e.user_id,
        "endpoint": d.endpoint,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": (
            d.next_attempt_at.isoformat() if d.status == DeliveryStatus.PENDING else None
        ),
        "last_status": d.last_status,
        "last_error": d.last_error,
        "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None,
        "created_at": e.created_at.isoformat(),
    }


@deliveries_group.command("list")
@click.option("--status", type=click.Choice([s.value for s in DeliveryStatus]), default=None)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--json", "as_json", is_flag=True, help="One compact JSON document on one line.")
@sync
async def deliveries_list(runtime: Runtime, status: str | None, limit: int, as_json: bool) -> None:
    """Deliveries, newest first."""
    async with runtime.db.read() as session:
        rows = await deliveries.list_deliveries(
            session, status=DeliveryStatus(status) if status else None, limit=limit
        )
    found = [describe_delivery(row) for row in rows]
    if as_json:
        echo_json({"deliveries": found}, compact=True)
        return
    for d in found:
        error = f"  {d['last_error']}" if d["last_error"] else ""
        click.echo(
            f"{d['created_at']}  {d['id']:>8}  {d['type']:<26} user={d['user_id']:<8}"
            f" {d['status']:<9} attempts={d['attempts']}  {d['endpoint']}{error}"
        )


@deliveries_group.command("retry")
@click.argument("delivery_id")
@click.option("--json", "as_json", is_flag=True, help="One compact JSON document on one line.")
@sync
async def deliveries_retry(runtime: Runtime, delivery_id: str, as_json: bool) -> None:
    """Send a delivery again at the next dispatch (failed, or delivered and lost downstream)."""
    parsed = parse_row_id(delivery_id)
    if parsed is None:
        fail(f"no outgoing delivery with id {delivery_id[:32]!r}")
    now = runtime.clock()
    result = await runtime.db.write(
        lambda session: deliveries.retry_delivery(session, delivery_id=parsed, now=now)
    )
    if isinstance(result, DeliveryNotFound):
        fail(result.message)
    document = describe_delivery(result)
    if as_json:
        echo_json(document, compact=True)
        return
    click.echo(f"delivery {document['id']} ({document['type']}) is pending again")

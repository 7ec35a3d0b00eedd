"""entitlements webhooks: stored Stripe events, listed and replayed."""

from __future__ import annotations

from typing import Any

import click

from gateway.cli.command import (
    cli_actor,
    echo_json,
    fail,
    sync,
)
from gateway.runtime import Runtime
from resolvers.billing import deliveries
from resolvers.billing import events as billing
from resolvers.errors import Failure


@click.group()
def webhooks() -> None:
    """Stored Stripe events: list them, replay one (runbook section 4)."""


def describe_stripe_event(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "type": row.type,
        "status": row.status,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "created": row.created.isoformat(),
        "received_at": row.received_at.isoformat(),
        "processed_at": row.processed_at.isoformat() if row.processed_at else None,
        "customer": row.stripe_customer_id,
        "object": row.stripe_object_id,
        "livemode": row.livemode,
        "request_id": row.request_id,
    }


@webhooks.command("list")
@click.option("--status", type=click.Choice(billing.STATUSES), default=None)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--json", "as_json", is_flag=True, help="One compact JSON document on one line.")
@sync
async def webhooks_list(runtime: Runtime, status: str | None, limit: int, as_json: bool) -> None:
    """Stored Stripe events, newest first."""
    async with runtime.db.read() as session:
        page = await billing.list_stripe_events(session, status=status, limit=limit)
    if isinstance(page, Failure):
        fail(page.message)
    events = [describe_stripe_event(row) for row in page.events]
    if as_json:
        echo_json({"events": events, "has_more": page.has_more}, compact=True)
        return
    for e in events:
        error = f"  {e['last_error']}" if e["last_error"] else ""
        click.echo(
            f"{e['received_at']}  {e['id']}  {e['type']:<40} {e['status']:<9}"
            f" attempts={e['attempts']}{error}"
        )


@webhooks.command("replay")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="One compact JSON document on one line.")
@sync
async def webhooks_replay(runtime: Runtime, event_id: str, as_json: bool) -> None:
    """Re-run a stored Stripe event through the webhook's handler; idempotent."""
    actor = cli_actor(source="stripe")
    result = await deliveries.replay_stripe_event(
        runtime.db,
        event_id=event_id,
        catalog=runtime.catalog,
        now=runtime.clock(),
        request_id=actor.request_id,
        stripe_client=runtime.stripe,
    )
    if isinstance(result, Failure):
        fail(f"{result.message} (correlation id {actor.request_id})")
    document = {
        "event": describe_stripe_event(result.event),
        "outcome": result.status,
        "changed": not result.duplicate,
        "effects": list(result.effects),
        "note": result.note,
        "correlation_id": actor.request_id,
    }
    if as_json:
        echo_json(document, compact=True)
        return
    if result.duplicate:
        click.echo(f"{event_id} ({result.event.type}): {result.note}")
        click.echo(f"correlation id: {actor.request_id}")
        return
    click.echo(f"{event_id} ({result.event.type}): {result.status}")
    for effect in result.effects:
        click.echo(f"  {effect}")
    if result.note:
        click.echo(f"  note: {result.note}")
    click.echo(f"correlation id: {actor.request_id}")

"""entitlements diagnose and analytics: the runbook's checks and its CRO query, for support."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import click

from gateway.cli.command import echo_json, fail, sync
from gateway.runtime import Runtime
from resolvers.errors import Failure
from resolvers.insights import analytics, diagnose


@click.command("diagnose")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="One compact JSON document on one line.")
@sync
async def diagnose_command(runtime: Runtime, email: str, as_json: bool) -> None:
    """The runbook's checks on one account, each finding with its escalation path."""
    async with runtime.db.read() as session:
        result = await diagnose.diagnose(
            session, email=email, catalog=runtime.catalog, now=runtime.clock()
        )
    document = iso_times({**dataclasses.asdict(result), "is_healthy": result.is_healthy})
    if as_json:
        echo_json(document, compact=True)
        return
    user = result.user
    if user is not None:
        click.echo(
            f"{user.email} (user {user.id}): tier {user.tier}, {user.credits_available} credits,"
            f" Stripe customer {user.stripe_customer_id or 'none'}"
        )
    if result.is_healthy:
        click.echo(f"healthy: {len(result.checks)} checks found nothing")
    for found in result.findings:
        click.echo(f"{found.severity.upper():<8} {found.code}: {found.summary}")
        click.echo(f"         fix: {found.remediation}")
        if found.escalation:
            click.echo(f"         escalate to: {found.escalation}")


@click.command("analytics")
@click.option(
    "--names",
    multiple=True,
    metavar="NAME[,NAME…]",
    help="Event names, repeated or comma-separated"
    " (default: cta_upgrade_click, premium_overlay_impression).",
)
@click.option(
    "--last",
    default=20,
    show_default=True,
    type=int,
    help=f"How many of the newest events, 1 to {analytics.MAX_LAST}.",
)
@click.option("--json", "as_json", is_flag=True, help="One compact JSON document on one line.")
@sync
async def analytics_command(
    runtime: Runtime, names: tuple[str, ...], last: int, as_json: bool
) -> None:
    """The runbook's CRO query: the newest events with these names (analyticsEvents)."""
    wanted = [n.strip() for given in names for n in given.split(",") if n.strip()] or None
    async with runtime.db.read() as session:
        rows = await analytics.recent_analytics_events(session, names=wanted, last=last)
    if isinstance(rows, Failure):
        fail(f"--{rows.message}")
    events = [describe_analytics_event(row) for row in rows]
    if as_json:
        echo_json({"events": events}, compact=True)
        return
    for e in events:
        click.echo(
            f"{e['occurred_at']}  {e['name']:<28} user={e['user_id']} session={e['session_id']}"
            f"  {e['properties']}"
        )


def describe_analytics_event(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "user_id": row.user_id,
        "session_id": row.session_id,
        "properties": row.properties,
        "request_id": row.request_id,
        "occurred_at": row.occurred_at.isoformat(),
    }


def iso_times(value: Any) -> Any:
    """The document with its times in ISO 8601, as the GraphQL API writes them."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: iso_times(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [iso_times(v) for v in value]
    return value

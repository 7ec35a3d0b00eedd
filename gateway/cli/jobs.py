"""entitlements jobs: the periodic sweep once, for cron (the server runs it on its own too)."""

from __future__ import annotations

import dataclasses

import click

from gateway.cli.command import cli_actor, echo_json, sync
from gateway.jobs import build_dispatcher, run_jobs
from gateway.runtime import Runtime


@click.group("jobs")
def jobs_group() -> None:
    """Periodic jobs: hold expiry, credits.expiring_soon, and one dispatch of outgoing webhooks."""


@jobs_group.command("run")
@click.option("--json", "as_json", is_flag=True, help="One compact JSON document on one line.")
@sync
async def jobs_run(runtime: Runtime, as_json: bool) -> None:
    """Run each job once; safe to run any time and from several hosts at once."""
    actor = cli_actor(source="system")
    dispatcher = build_dispatcher(runtime)
    try:
        report = await run_jobs(runtime, actor=actor, dispatcher=dispatcher)
    finally:
        if dispatcher is not None:
            await dispatcher.close()
    document = dataclasses.asdict(report)
    if as_json:
        echo_json({**document, "correlation_id": actor.request_id}, compact=True)
        return
    holds = report.holds
    click.echo(
        "holds: another process is sweeping"
        if holds.skipped
        else f"holds: {holds.holds} expired for {holds.users} users"
    )
    click.echo(f"credits.expiring_soon: {report.expiring_soon} queued")
    sent = report.dispatch
    if sent is None:
        click.echo("outgoing webhooks: not configured (OUTGOING_WEBHOOK_URLS)")
    elif sent.skipped:
        click.echo("outgoing webhooks: another process is dispatching")
    else:
        click.echo(f"outgoing webhooks: {sent.delivered} delivered, {sent.failed} failed")
    click.echo(f"correlation id: {actor.request_id}")

"""entitlements holds: record the holds that ran out (the server does it too, every 30 s)."""

from __future__ import annotations

import click

from gateway.cli.command import cli_actor, echo_json, sync
from gateway.runtime import Runtime
from gateway.sweeps import sweep_holds


@click.group("holds")
def holds_group() -> None:
    """Credit holds (reserveCredits): their credits are available again from expiresAt on."""


@holds_group.command("sweep")
@click.option("--json", "as_json", is_flag=True, help="One compact JSON document on one line.")
@sync
async def holds_sweep(runtime: Runtime, as_json: bool) -> None:
    """Write status and ledger entries for every hold past its expiry; safe to run any time.

    On PostgreSQL one process sweeps at a time: a run that finds another one sweeping skips.
    """
    actor = cli_actor(source="system")
    report = await sweep_holds(runtime.db, now=runtime.clock(), actor=actor)
    document = {"users": report.users, "holds": report.holds, "skipped": report.skipped}
    if as_json:
        echo_json({**document, "correlation_id": actor.request_id}, compact=True)
        return
    if report.skipped:
        click.echo("another process is sweeping: nothing done")
    else:
        click.echo(f"{report.holds} holds expired for {report.users} users")
    click.echo(f"correlation id: {actor.request_id}")

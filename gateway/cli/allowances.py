"""entitlements allowances: grant this month's plan allowances ahead of the users' next writes."""

from __future__ import annotations

import click

from gateway.cli.command import cli_actor, echo_json, sync
from gateway.runtime import Runtime
from resolvers.ledger import allowances

BATCH = 500


@click.group("allowances")
def allowances_group() -> None:
    """Monthly plan allowances (granted on a user's next write, or here, e.g. from cron)."""


@allowances_group.command("grant")
@click.option("--json", "as_json", is_flag=True, help="One compact JSON document on one line.")
@sync
async def allowances_grant(runtime: Runtime, as_json: bool) -> None:
    """Grant every due allowance of the current month; safe to run again at any time.

    Each user is its own transaction (locked, expired credits written off, allowance granted
    once per month), so a run can be stopped and restarted, and runs beside the API.
    """
    actor = cli_actor(source="system")
    now = runtime.clock()
    looked_at = granted = 0
    after_id = 0
    while True:
        async with runtime.db.read() as session:
            batch = await allowances.users_due_an_allowance(
                session, now=now, after_id=after_id, limit=BATCH
            )
        if not batch:
            break
        for user_id in batch:
            event = await runtime.db.write(
                lambda session, user_id=user_id: allowances.grant_due_allowance(
                    session, user_id, catalog=runtime.catalog, now=now, actor=actor
                )
            )
            looked_at += 1
            granted += event is not None
        after_id = batch[-1]
    period = f"{allowances.allowance_period(now)[0]:%Y-%m}"
    document = {"period": period, "users": looked_at, "granted": granted}
    if as_json:
        echo_json({**document, "correlation_id": actor.request_id}, compact=True)
        return
    click.echo(f"{period}: {looked_at} users looked at, {granted} allowances granted")
    click.echo(f"correlation id: {actor.request_id}")

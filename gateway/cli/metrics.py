"""entitlements metrics: the observability snapshot."""

from __future__ import annotations

import click

from gateway.cli.command import (
    echo_json,
    fail,
    sync,
)
from gateway.runtime import Runtime
from resolvers.errors import Failure
from resolvers.insights import metrics


@click.command("metrics")
@click.option(
    "--days",
    default=metrics.DEFAULT_DAYS,
    show_default=True,
    type=int,
    help=f"Window of the payment and credit rollups, 1 to {metrics.MAX_DAYS} days.",
)
@click.option("--json", "as_json", is_flag=True, help="One compact JSON document on one line.")
@sync
async def metrics_command(runtime: Runtime, days: int, as_json: bool) -> None:
    """The runbook's observability snapshot (collect_entitlement_metrics) as JSON."""
    async with runtime.db.read() as session:
        result = await metrics.collect_entitlement_metrics(
            session, now=runtime.clock(), days=days, catalog=runtime.catalog
        )
    if isinstance(result, Failure):
        fail(f"--{result.message}")
    echo_json(result.as_dict(), compact=as_json)

"""The `entitlements` command: for operators and support, over the same resolvers as the API."""

from __future__ import annotations

import sys

import click

from gateway.cli import (
    adjust,
    allowances,
    db,
    deliveries,
    dev,
    holds,
    insights,
    jobs,
    keys,
    metrics,
    payments,
    sdl,
    serve,
    users,
    webhooks,
)
from gateway.cli.command import fail
from gateway.clock import ClockSettingError, install_test_clock


@click.group()
@click.version_option(package_name="entitlements-gateway", prog_name="entitlements")
def main() -> None:
    """Entitlements gateway: plan tiers, AI credits, payments and Stripe billing state."""
    try:
        install_test_clock()
    except ClockSettingError as exc:
        fail(str(exc))


for command in (
    db.db,
    users.user,
    adjust.adjust,
    allowances.allowances_group,
    holds.holds_group,
    jobs.jobs_group,
    deliveries.deliveries_group,
    keys.keys_group,
    sdl.schema_group,
    serve.serve,
    metrics.metrics_command,
    webhooks.webhooks,
    payments.payment,
    insights.diagnose_command,
    insights.analytics_command,
    dev.dev,
):
    main.add_command(command)


def run() -> None:
    """The console script: every failure, a usage error too, is one line on stderr."""
    try:
        code = main(standalone_mode=False)
    except click.ClickException as exc:
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see {exc.ctx.command_path} --help)"
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["main", "run"]

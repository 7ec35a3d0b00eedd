"""The `entitlements` command: for operators and support, over the same resolvers as the API."""

from __future__ import annotations

import click

from gateway.cli import adjust, db, keys, metrics, payments, sdl, serve, users, webhooks


@click.group()
def main() -> None:
    """Entitlements gateway: plan tiers, AI credits, payments and Stripe billing state."""


for command in (
    db.db,
    users.user,
    adjust.adjust,
    keys.keys_group,
    sdl.schema_group,
    serve.serve,
    metrics.metrics_command,
    webhooks.webhooks,
    payments.payment,
):
    main.add_command(command)

__all__ = ["main"]

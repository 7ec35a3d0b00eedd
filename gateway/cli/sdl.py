"""entitlements schema: the GraphQL schema as SDL."""

from __future__ import annotations

import click


@click.group("schema")
def schema_group() -> None:
    """The GraphQL schema."""


@schema_group.command("export")
def schema_export() -> None:
    """Print the schema as SDL (checked in as schema.graphql)."""
    from schema import schema

    click.echo(schema.as_str())

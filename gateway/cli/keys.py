"""entitlements keys: API keys for staff and services."""

from __future__ import annotations

import click

from gateway.cli.command import (
    echo_json,
    fail,
    sync,
)
from gateway.runtime import Runtime
from resolvers import keys
from resolvers.errors import Failure


@click.group("keys")
def keys_group() -> None:
    """API keys for staff and services (shown once, stored hashed)."""


@keys_group.command("create")
@click.option("--role", required=True, type=click.Choice(keys.ROLES))
@click.option("--name", required=True, help="Who or what holds it, e.g. ai-backend, jane.")
@sync
async def keys_create(runtime: Runtime, role: str, name: str) -> None:
    """Create a key; the key itself is the last line of stdout, shown this once."""
    now = runtime.clock()
    result = await runtime.db.write(
        lambda session: keys.create_api_key(session, name=name, role=role, now=now)
    )
    if isinstance(result, Failure):
        fail(result.message)
    click.echo(f"created {role} key {name!r}; store it now, it is not shown again:")
    click.echo(result.secret)


@keys_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@sync
async def keys_list(runtime: Runtime, as_json: bool) -> None:
    """List keys (names, roles, prefixes; never the keys)."""
    async with runtime.db.read() as session:
        rows = await keys.list_api_keys(session)
    documents = [
        {
            "name": row.name,
            "role": row.role,
            "prefix": row.prefix,
            "created_at": row.created_at.isoformat(),
            "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        }
        for row in rows
    ]
    if as_json:
        echo_json(documents, compact=True)
        return
    for doc in documents:
        state = f"revoked {doc['revoked_at']}" if doc["revoked_at"] else "active"
        click.echo(f"{doc['name']:<24} {doc['role']:<10} {doc['prefix']}…  {state}")


@keys_group.command("revoke")
@click.argument("name")
@sync
async def keys_revoke(runtime: Runtime, name: str) -> None:
    """Revoke a key by name (running servers stop accepting it within seconds)."""
    now = runtime.clock()
    result = await runtime.db.write(
        lambda session: keys.revoke_api_key(session, name=name, now=now)
    )
    if isinstance(result, Failure):
        fail(result.message)
    click.echo(f"revoked key {name!r}")

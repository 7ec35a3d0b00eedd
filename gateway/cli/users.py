"""entitlements user: create users and show their account state."""

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
from resolvers import credits, entitlements, users
from resolvers.errors import Failure
from resolvers.users import UserRef


@click.group()
def user() -> None:
    """Look users up and create them."""


@user.command("create")
@click.argument("email")
@click.option("--tier", default=None, help="Initial tier (default: the catalog's lowest).")
@click.option("--locale", default=None)
@click.option("--external-id", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@sync
async def user_create(
    runtime: Runtime,
    email: str,
    tier: str | None,
    locale: str | None,
    external_id: str | None,
    as_json: bool,
) -> None:
    """Create a user (or update an existing one's locale and external id)."""
    actor = cli_actor()
    now = runtime.clock()

    def work(session: Any) -> Any:
        return users.upsert_user(
            session,
            email=email,
            catalog=runtime.catalog,
            now=now,
            external_id=external_id,
            locale=locale,
            tier=tier,
        )

    result = await runtime.db.write(work)
    if isinstance(result, Failure):
        fail(result.message)
    document = {
        "id": result.user.id,
        "email": result.user.email,
        "tier": result.user.tier,
        "created": result.created,
        "ai_credits": result.user.credits_available,
        "correlation_id": actor.request_id,
    }
    if as_json:
        echo_json(document, compact=True)
    else:
        verb = "created" if result.created else "updated"
        click.echo(f"{verb} user {result.user.id} {result.user.email} (tier {result.user.tier})")
        click.echo(f"correlation id: {actor.request_id}")


@user.command("show")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="One compact JSON document on one line.")
@sync
async def user_show(runtime: Runtime, email: str, as_json: bool) -> None:
    """The runbook's "verify account state": tier, Stripe customer, credits, last 5 events,
    and the feature entitlements.

    A read: nothing is written. A monthly allowance that is due shows in the balance as if
    granted; the user's next credit change (or `entitlements allowances grant`) writes it.
    """
    async with runtime.db.read() as session:
        row = await users.find_user(session, UserRef(email=email))
        if row is None:
            fail(UserRef(email=email).not_found().message)
        now = runtime.clock()
        meta = await credits.read_plan_metadata(session, row, catalog=runtime.catalog, now=now)
    shown = entitlements.entitlements_of(runtime.catalog, row, now)
    echo_json(
        {
            "email": row.email,
            "user_id": row.id,
            **meta.as_dict(),
            "entitlements": [e.as_dict() for e in shown],
        },
        compact=as_json,
    )

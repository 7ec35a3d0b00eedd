"""entitlements user: create users and show their account state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from gateway.cli.command import (
    cli_actor,
    echo_json,
    fail,
    sync,
)
from gateway.runtime import Runtime
from resolvers import users
from resolvers.entitlements import access as entitlements
from resolvers.errors import Failure
from resolvers.ledger import credits, history
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
@click.option("--at", "at_text", default=None, help="ISO 8601 time: the balance as it stood then.")
@sync
async def user_show(runtime: Runtime, email: str, as_json: bool, at_text: str | None) -> None:
    """The runbook's "verify account state": tier, Stripe customer, credits, last 5 events,
    and the feature entitlements.

    A read: nothing is written. A monthly allowance that is due shows in the balance as if
    granted; the user's next credit change (or `entitlements allowances grant`) writes it.
    With --at, the available and held credits, holds and grants as they stood at that time,
    as GraphQL's credits(at:) answers them.
    """
    at = None if at_text is None else _past_time(at_text, runtime.clock())
    async with runtime.db.read() as session:
        row = await users.find_user(session, UserRef(email=email))
        if row is None:
            fail(UserRef(email=email).not_found().message)
        if at is not None:
            past = await history.balance_at(session, row.id, at)
            echo_json(_describe_past(row, past), compact=as_json)
            return
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


def _past_time(text: str, now: datetime) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--at: not an ISO 8601 time: {text!r}")
    if at.tzinfo is None:
        fail("--at: needs a time zone, e.g. Z or +01:00")
    if at > now:
        fail("--at: must not be in the future")
    return at


def _describe_past(row: Any, past: history.BalanceAt) -> dict[str, Any]:
    return {
        "email": row.email,
        "user_id": row.id,
        "at": past.at.isoformat(),
        "available": past.available,
        "held": past.held,
        "holds": [
            {
                "id": h.id,
                "amount": h.amount,
                "reason": h.reason,
                "expires_at": h.expires_at.isoformat(),
            }
            for h in past.holds
        ],
        "grants": [
            {
                "id": g.grant.id,
                "remaining": g.remaining,
                "expires_at": g.grant.expires_at.isoformat() if g.grant.expires_at else None,
            }
            for g in past.grants
        ],
        "as_of_event": past.as_of,
    }

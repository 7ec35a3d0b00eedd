"""entitlements dev: data for a developer's own database (users with credits), never production."""

from __future__ import annotations

import uuid

import click
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.cli.command import cli_actor, echo_json, fail, sync
from gateway.runtime import Runtime
from resolvers import users
from resolvers.errors import Failure
from resolvers.ledger import credits
from resolvers.models import User
from resolvers.users import UserRef

MAX_SEED_USERS = 100_000
MAX_SEED_CREDITS = 1_000_000
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", None, "")


@click.group()
def dev() -> None:
    """Development data (a local database only, unless --force)."""


@dev.command("seed")
@click.option("--users", "count", required=True, type=click.IntRange(1, MAX_SEED_USERS))
@click.option(
    "--credits",
    "amount",
    default=100,
    show_default=True,
    type=click.IntRange(0, MAX_SEED_CREDITS),
    help="Support credits granted to each user.",
)
@click.option("--force", is_flag=True, help="Seed a database that is not on this machine.")
@click.option("--json", "as_json", is_flag=True, help="One compact JSON document on one line.")
@sync
async def seed(runtime: Runtime, count: int, amount: int, force: bool, as_json: bool) -> None:
    """Create USERS users across the catalog's tiers, each granted CREDITS credits.

    Through the same resolvers as `user create` and `adjust --grant-credits`: each user is one
    transaction with its ledger event and its entitlement_change line.
    """
    if not runtime.db.is_sqlite and make_url(runtime.db.url).host not in LOCAL_HOSTS and not force:
        fail("dev seed writes made-up users: DATABASE_URL is not on this machine (--force)")
    actor = cli_actor(source="system")
    run = uuid.uuid4().hex[:8]
    tiers = [tier.code for tier in runtime.catalog.tiers]
    now = runtime.clock()
    created: list[int] = []

    async def one(session: AsyncSession, index: int) -> User | Failure:
        made = await users.upsert_user(
            session,
            email=f"dev-{run}-{index:06d}@example.com",
            catalog=runtime.catalog,
            now=now,
            tier=tiers[index % len(tiers)],
        )
        if isinstance(made, Failure) or not amount:
            return made if isinstance(made, Failure) else made.user
        granted = await credits.grant_ai_credits(
            session,
            user=UserRef(user_id=made.user.id),
            amount=amount,
            reason="dev seed",
            actor=actor,
            now=now,
        )
        return granted if isinstance(granted, Failure) else granted.user

    # The bar goes to stderr, and only to a terminal: stdout keeps the summary a script reads,
    # and a failure stays one line on stderr.
    stderr = click.get_text_stream("stderr")
    with click.progressbar(
        range(count), label="seeding users", file=stderr, hidden=not stderr.isatty()
    ) as indexes:
        for index in indexes:
            result = await runtime.db.write(lambda s, i=index: one(s, i))
            if isinstance(result, Failure):
                fail(f"user {index}: {result.message} (created {len(created)} before it)")
            created.append(result.id)
    document = {
        "users": len(created),
        "credits_each": amount,
        "email_pattern": f"dev-{run}-NNNNNN@example.com",
        "first_user_id": created[0],
        "last_user_id": created[-1],
        "correlation_id": actor.request_id,
    }
    if as_json:
        echo_json(document, compact=True)
    else:
        click.echo(
            f"created {len(created)} users dev-{run}-*@example.com with {amount} credits each"
        )
        click.echo(f"correlation id: {actor.request_id}")

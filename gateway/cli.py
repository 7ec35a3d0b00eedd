"""The `entitlements` command: for operators and support, over the same resolvers as the API."""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy.exc import DBAPIError

from gateway import migrate
from gateway import webhooks as webhook_route
from gateway.logs import configure_logging, request_id_var
from gateway.runtime import Runtime
from gateway.settings import Settings, SettingsError
from resolvers import billing, credits, keys, ledger, metrics, payments, tiers, users
from resolvers.catalog import CatalogError
from resolvers.errors import Failure
from resolvers.users import UserRef

T = TypeVar("T")
log = logging.getLogger("gateway.cli")


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 1: what scripts and support engineers both can read."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        fail(str(exc))


def run_with_runtime(work: Callable[[Runtime], Awaitable[T]]) -> T:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)

    async def main() -> T:
        try:
            runtime = Runtime.from_settings(settings, pool_size=2)
        except CatalogError as exc:
            fail(str(exc))
        try:
            return await work(runtime)
        except (OSError, DBAPIError) as exc:
            fail(database_failure(exc))
        finally:
            await runtime.close()

    return asyncio.run(main())


def database_failure(exc: OSError | DBAPIError) -> str:
    """One line for a database that cannot be reached or used; the traceback at DEBUG only.

    Never the URL itself: it may carry a password.
    """
    log.debug("database failure", exc_info=exc)
    if isinstance(exc, DBAPIError):
        detail = (str(exc.orig).strip().splitlines() or [""])[0]
        return (
            f"database error: {type(exc.orig).__name__}: {detail}"
            " (is DATABASE_URL right and migrated? entitlements db upgrade)"
        )
    return f"DATABASE_URL: cannot reach the database: {type(exc).__name__}: {exc}"


def cli_actor(source: str = "support") -> ledger.Actor:
    """The CLI's actor: the operator's login, under a fresh correlation id for this command."""
    request_id = f"cli-{uuid.uuid4().hex}"
    request_id_var.set(request_id)
    return ledger.Actor(name=f"cli:{getpass.getuser()}", source=source, request_id=request_id)


def echo_json(document: Any, *, compact: bool) -> None:
    click.echo(json.dumps(document, default=str, indent=None if compact else 2))


def parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        fail(f"--expires-at: not an ISO 8601 time: {value!r}")
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        run_with_runtime(lambda runtime: fn(runtime, *args, **kwargs))

    return wrapper


@click.group()
def main() -> None:
    """Entitlements gateway: plan tiers, AI credits, payments and Stripe billing state."""


# --- db --------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database migrations."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Migrate the database (DATABASE_URL) up to REVISION."""
    settings = load_settings()
    try:
        migrate.upgrade(settings.database_url, revision)
    except (OSError, DBAPIError) as exc:
        fail(database_failure(exc))
    click.echo(f"database at {revision}")


@db.command("downgrade")
@click.option("--revision", default="-1", show_default=True, help="'base' removes everything.")
def db_downgrade(revision: str) -> None:
    """Migrate the database down to REVISION (one step by default)."""
    settings = load_settings()
    try:
        migrate.downgrade(settings.database_url, revision)
    except (OSError, DBAPIError) as exc:
        fail(database_failure(exc))
    click.echo(f"database at {revision}")


# --- users -----------------------------------------------------------------------------------


@main.group()
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
    """The runbook's "verify account state": tier, Stripe customer, credits, last 5 events."""
    actor = cli_actor(source="system")

    async def work(session: Any) -> Any:
        row = await users.find_user(session, UserRef(email=email))
        if row is None:
            return UserRef(email=email).not_found()
        meta = await credits.ensure_plan_metadata(
            session, row, catalog=runtime.catalog, now=runtime.clock(), actor=actor
        )
        return row, meta

    result = await runtime.db.write(work)
    if isinstance(result, Failure):
        fail(result.message)
    row, meta = result
    echo_json(
        {"email": row.email, "user_id": row.id, **meta.as_dict()},
        compact=as_json,
    )


# --- adjust ----------------------------------------------------------------------------------


@main.command()
@click.option("--user", "email", required=True, help="The customer's login email.")
@click.option("--grant-credits", type=int, default=None, metavar="N")
@click.option("--consume-credits", type=int, default=None, metavar="N")
@click.option("--set-tier", default=None, metavar="TIER")
@click.option("--reason", default=None, help="Why (default: support-adjustment).")
@click.option("--expires-at", default=None, help="ISO 8601 expiry of granted credits.")
@click.option("--idempotency-key", default=None, help="Makes a retried command a no-op.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@sync
async def adjust(
    runtime: Runtime,
    email: str,
    grant_credits: int | None,
    consume_credits: int | None,
    set_tier: str | None,
    reason: str | None,
    expires_at: str | None,
    idempotency_key: str | None,
    as_json: bool,
) -> None:
    """Grant or consume credits, or reset the tier, as the support runbook does it."""
    chosen = [o for o in (grant_credits, consume_credits, set_tier) if o is not None]
    if len(chosen) != 1:
        fail("give exactly one of --grant-credits, --consume-credits, --set-tier")
    actor = cli_actor()
    reason = reason or "support-adjustment"
    now = runtime.clock()
    ref = UserRef(email=email)
    catalog = runtime.catalog

    async def work(session: Any) -> Any:
        if grant_credits is not None:
            return await credits.grant_ai_credits(
                session,
                user=ref,
                amount=grant_credits,
                reason=reason,
                actor=actor,
                now=now,
                expires_at=parse_time(expires_at),
                idempotency_key=idempotency_key,
            )
        if consume_credits is not None:
            return await credits.consume_credits(
                session,
                user=ref,
                amount=consume_credits,
                reason=reason,
                actor=actor,
                now=now,
                catalog=catalog,
                idempotency_key=idempotency_key,
            )
        assert set_tier is not None
        return await tiers.set_tier(
            session,
            user=ref,
            tier=set_tier,
            reason=reason,
            actor=actor,
            now=now,
            catalog=catalog,
            idempotency_key=idempotency_key,
        )

    result = await runtime.db.write(work)
    if isinstance(result, Failure):
        fail(f"{result.message} (correlation id {actor.request_id})")
    document: dict[str, Any] = {
        "email": result.user.email,
        "tier": result.user.tier,
        "ai_credits": result.user.credits_available,
        "replayed": result.replayed,
        "correlation_id": actor.request_id,
    }
    if isinstance(result, credits.CreditChanged):
        document["credit_event"] = ledger.describe_event(result.event)
        summary = f"{result.event.kind} {result.event.amount:+d} credits"
    else:
        change = result.change
        document["tier_change"] = (
            None if change is None else {"from": change.from_tier, "to": change.to_tier}
        )
        summary = f"tier {result.user.tier}" + ("" if change else " (unchanged)")
    if as_json:
        echo_json(document, compact=True)
    else:
        click.echo(
            f"{result.user.email}: {summary}; balance {result.user.credits_available};"
            f" tier {result.user.tier}" + (" (replayed)" if result.replayed else "")
        )
        click.echo(f"correlation id: {actor.request_id}")


# --- keys ------------------------------------------------------------------------------------


@main.group("keys")
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


# --- schema ----------------------------------------------------------------------------------


@main.group("schema")
def schema_group() -> None:
    """The GraphQL schema."""


@schema_group.command("export")
def schema_export() -> None:
    """Print the schema as SDL (checked in as schema.graphql)."""
    from schema import schema

    click.echo(schema.as_str())


# --- serve -----------------------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
@click.option(
    "--migrate/--no-migrate",
    "migrate_first",
    default=None,
    help="Migrate before serving (default: yes on SQLite, no on PostgreSQL).",
)
def serve(host: str, port: int, workers: int, migrate_first: bool | None) -> None:
    """Serve the gateway with uvicorn."""
    import uvicorn

    settings = load_settings()
    if settings.is_sqlite if migrate_first is None else migrate_first:
        migrate.upgrade(settings.database_url)
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        "gateway.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
    )


# --- metrics ---------------------------------------------------------------------------------


@main.command("metrics")
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


# --- webhooks --------------------------------------------------------------------------------


@main.group()
def webhooks() -> None:
    """Stored Stripe events: list them, replay one (runbook section 4)."""


def describe_stripe_event(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "type": row.type,
        "status": row.status,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "created": row.created.isoformat(),
        "received_at": row.received_at.isoformat(),
        "processed_at": row.processed_at.isoformat() if row.processed_at else None,
        "customer": row.stripe_customer_id,
        "object": row.stripe_object_id,
        "livemode": row.livemode,
        "request_id": row.request_id,
    }


@webhooks.command("list")
@click.option("--status", type=click.Choice(billing.STATUSES), default=None)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--json", "as_json", is_flag=True, help="One compact JSON document on one line.")
@sync
async def webhooks_list(runtime: Runtime, status: str | None, limit: int, as_json: bool) -> None:
    """Stored Stripe events, newest first."""
    async with runtime.db.read() as session:
        page = await billing.list_stripe_events(session, status=status, limit=limit)
    if isinstance(page, Failure):
        fail(page.message)
    events = [describe_stripe_event(row) for row in page.events]
    if as_json:
        echo_json({"events": events, "has_more": page.has_more}, compact=True)
        return
    for e in events:
        error = f"  {e['last_error']}" if e["last_error"] else ""
        click.echo(
            f"{e['received_at']}  {e['id']}  {e['type']:<40} {e['status']:<9}"
            f" attempts={e['attempts']}{error}"
        )


@webhooks.command("replay")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="One compact JSON document on one line.")
@sync
async def webhooks_replay(runtime: Runtime, event_id: str, as_json: bool) -> None:
    """Re-run a stored Stripe event through the webhook's handler; idempotent."""
    actor = cli_actor(source="stripe")
    result = await webhook_route.replay_stripe_event(runtime, event_id, actor.request_id)
    if isinstance(result, Failure):
        fail(f"{result.message} (correlation id {actor.request_id})")
    document = {
        "event": describe_stripe_event(result.event),
        "outcome": result.status,
        "effects": list(result.effects),
        "note": result.note,
        "correlation_id": actor.request_id,
    }
    if as_json:
        echo_json(document, compact=True)
        return
    click.echo(f"{event_id} ({result.event.type}): {result.status}")
    for effect in result.effects:
        click.echo(f"  {effect}")
    if result.note:
        click.echo(f"  note: {result.note}")
    click.echo(f"correlation id: {actor.request_id}")


# --- payments --------------------------------------------------------------------------------


@main.group()
def payment() -> None:
    """Payments and the credits they granted (runbook: linking payments to credit balance)."""


@payment.command("show")
@click.argument("ref", metavar="ID_OR_STRIPE_ID")
@click.option("--json", "as_json", is_flag=True, help="One compact JSON document on one line.")
@sync
async def payment_show(runtime: Runtime, ref: str, as_json: bool) -> None:
    """A payment by id or Stripe id (cs_, in_, pi_, ch_), with its grants and ledger events."""
    async with runtime.db.read() as session:
        found = await payments.find_payment(session, ref=ref)
    if isinstance(found, Failure):
        fail(found.message)
    p = found.payment
    document = {
        "id": p.id,
        "user": {"id": found.user.id, "email": found.user.email},
        "kind": p.kind,
        "status": p.status,
        "amount": p.amount,
        "currency": p.currency,
        "amount_refunded": p.amount_refunded,
        "pack": p.pack_code,
        "tier": p.tier_code,
        "stripe": {
            "object": p.stripe_object_id,
            "payment_intent": p.stripe_payment_intent_id,
            "charge": p.stripe_charge_id,
            "invoice": p.stripe_invoice_id,
        },
        "credits_granted": p.credits_granted,
        "credits_revoked": p.credits_revoked,
        "credits_unrecovered": p.credits_unrecovered,
        "created_at": p.created_at.isoformat(),
        "grants": [
            {
                "id": g.id,
                "amount": g.amount,
                "remaining": g.remaining,
                "expires_at": g.expires_at.isoformat() if g.expires_at else None,
                "is_purchased": g.is_purchased,
            }
            for g in found.grants
        ],
        "ledger_events": [
            {**ledger.describe_event(e), "grant_id": e.grant_id, "allocations": e.allocations}
            for e in found.events
        ],
    }
    echo_json(document, compact=as_json)


if __name__ == "__main__":
    main()

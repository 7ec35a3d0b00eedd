"""entitlements adjust: support's credit, tier and feature entitlement changes."""

from __future__ import annotations

from typing import Any

import click

from gateway.cli.command import (
    cli_actor,
    echo_json,
    fail,
    parse_time,
    sync,
)
from gateway.runtime import Runtime
from resolvers.entitlements import overrides
from resolvers.errors import Failure
from resolvers.ledger import credits, tiers
from resolvers.ledger import entries as ledger
from resolvers.users import UserRef


@click.command()
@click.option("--user", "email", required=True, help="The customer's login email.")
@click.option("--grant-credits", type=int, default=None, metavar="N")
@click.option("--consume-credits", type=int, default=None, metavar="N")
@click.option("--set-tier", default=None, metavar="TIER")
@click.option("--feature", default=None, help="Override one feature's entitlement (see below).")
@click.option("--limit", type=int, default=None, metavar="N", help="With --feature: limit N.")
@click.option("--grant", is_flag=True, help="With --feature: access, without a limit.")
@click.option("--revoke", is_flag=True, help="With --feature: no access.")
@click.option("--reason", default=None, help="Why (default: support-adjustment).")
@click.option("--expires-at", default=None, help="ISO 8601 expiry of credits or an override.")
@click.option("--idempotency-key", default=None, help="Makes a retried command a no-op.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@sync
async def adjust(
    runtime: Runtime,
    email: str,
    grant_credits: int | None,
    consume_credits: int | None,
    set_tier: str | None,
    feature: str | None,
    limit: int | None,
    grant: bool,
    revoke: bool,
    reason: str | None,
    expires_at: str | None,
    idempotency_key: str | None,
    as_json: bool,
) -> None:
    """Grant or consume credits, or reset the tier, as the support runbook does it.

    Or override the plan for one feature: --feature F with one of --limit N, --grant (access
    without a limit) or --revoke, optionally until --expires-at; the plan applies again after.
    """
    chosen = [o for o in (grant_credits, consume_credits, set_tier, feature) if o is not None]
    if len(chosen) != 1:
        fail("give exactly one of --grant-credits, --consume-credits, --set-tier, --feature")
    modes = [limit is not None, grant, revoke].count(True)
    if modes != (0 if feature is None else 1):
        fail("give --feature with exactly one of --limit, --grant, --revoke")
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
                catalog=catalog,
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
        if feature is not None:
            return await overrides.set_entitlement_override(
                session,
                user=ref,
                feature=feature,
                has_access=not revoke,
                limit=limit,
                reason=reason,
                actor=actor,
                now=now,
                catalog=catalog,
                expires_at=parse_time(expires_at),
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
    if isinstance(result, overrides.OverrideSet):
        document["entitlement"] = result.entitlement.as_dict()
        summary = f"{result.entitlement.feature}: {result.entitlement.describe()}"
    elif isinstance(result, credits.CreditChanged):
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

"""Looking is not writing: every read leaves every table as it was, even on a month's first day.

A user whose monthly allowance is due sees it in their balance at once; the grant itself is
written by their next credit change (or `entitlements allowances grant`), never by a read.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from gateway import migrate
from gateway.runtime import Runtime
from resolvers.ledger import allowances, holds
from resolvers.models import CreditEvent
from resolvers.users import UserRef
from tests.factories import SUPPORT, make_user
from tests.resolvers.billing_rows import add_payment, update_user
from tests.schema.conftest import data_of, user_token

READS = {
    "viewer": "{ viewer { email tier credits { available nextExpiry grants { id amount "
    "remaining expiresAt source } } creditEvents(first: 5) { edges { node { kind } } } } }",
    "user": "query ($email: String!) { user(email: $email) { tier credits { available "
    "nextExpiry grants { id remaining expiresAt } } payments { edges { node { id } } } } }",
    "users": "{ users(first: 10) { edges { node { email credits { available } } } } }",
    "diagnose": "query ($email: String!) { diagnose(email: $email) { email findings { code } } }",
    "pricing": "{ pricing { tiers { code } } }",
    "metrics": "{ metrics(days: 7) { users { total } } }",
    "payments": "{ payments(first: 5) { edges { node { id } } } }",
    "webhookEvents": "{ webhookEvents(first: 5) { edges { node { id } } } }",
    "analyticsEvents": "{ analyticsEvents(last: 5) { name } }",
    "entitlementChanges": '{ entitlementChanges(requestId: "req-test") { __typename } }',
    "holds": "{ viewer { credits { available held holds { id status user { id } } } } }",
    "credits(at:)": "query ($email: String!, $at: DateTime) { user(email: $email) { "
    "credits(at: $at) { available held holds { status } grants { remaining } asOf } "
    "creditEvents(since: $at) { edges { node { kind } } } } }",
    "entitlements": "{ viewer { entitlements { feature hasAccess usage remaining resetsAt } "
    'entitlement(feature: "pdf_exports") { usage remaining source } } }',
}


async def user_with_allowance_due(runtime: Runtime, *, with_run_out_hold: bool = False):
    """A pro user last looked at in an earlier month: this month's 1,000 credits are due.

    With `with_run_out_hold`, a hold of 3 of their 7 credits ran out a second ago, with no
    write since.
    """
    user = await make_user(runtime, tier="pro", credits_granted=7)
    if with_run_out_hold:
        await add_run_out_hold(runtime, user.id)
    earlier = allowances.allowance_period(runtime.clock())[0] - timedelta(days=1)
    await update_user(
        runtime, user.id, allowance_period_start=allowances.allowance_period(earlier)[0]
    )
    await add_payment(runtime, user)
    return user


async def add_run_out_hold(runtime: Runtime, user_id: int) -> None:
    held = await runtime.db.write(
        lambda s: holds.reserve_credits(
            s,
            user=UserRef(user_id=user_id),
            amount=3,
            reason="a call that crashed",
            actor=SUPPORT,
            now=runtime.clock(),
            catalog=runtime.catalog,
            ttl_seconds=60,
        )
    )
    assert isinstance(held, holds.HoldChanged), held
    runtime.clock.advance(seconds=61)


async def test_every_read_leaves_every_table_unchanged(
    runtime: Runtime, gql, make_key, database_url: str
) -> None:
    user = await user_with_allowance_due(runtime, with_run_out_hold=True)
    support = await make_key("support")
    before = await migrate.row_counts(database_url)
    for name, query in READS.items():
        viewer_reads = ("viewer", "pricing", "holds", "entitlements")
        token = user_token(user.id) if name in viewer_reads else support
        variables = {"email": user.email} if "$email" in query else None
        if variables is not None and "$at" in query:
            variables["at"] = (runtime.clock() - timedelta(seconds=30)).isoformat()
        body = await gql(query, variables, token=token)
        assert "errors" not in body, (name, body)
        assert await migrate.row_counts(database_url) == before, name


async def test_a_due_allowance_is_shown_before_it_is_written_and_granted_once_by_a_write(
    runtime: Runtime, gql, make_key
) -> None:
    user = await user_with_allowance_due(runtime)
    period_start, period_end = allowances.allowance_period(runtime.clock())
    shown = data_of(
        await gql(
            "{ viewer { credits { available nextExpiry grants { id remaining expiresAt } } } }",
            token=user_token(user.id),
        )
    )["viewer"]["credits"]
    assert shown["available"] == 7 + 1000
    assert shown["nextExpiry"] == period_end.isoformat()
    assert {"id": f"pending-allowance-{period_start:%Y-%m}", "remaining": 1000,
            "expiresAt": period_end.isoformat()} in shown["grants"]  # fmt: skip

    service = await make_key("service")
    spent = data_of(
        await gql(
            "mutation ($email: String!) { consumeCredits(input: {email: $email, amount: 10, "
            'reason: "ai call"}) { ... on CreditChange { event { balanceAfter } } } }',
            {"email": user.email},
            token=service,
        )
    )["consumeCredits"]
    # The spend wrote the allowance first, then burned the soonest-expiring credits.
    assert spent["event"]["balanceAfter"] == 7 + 1000 - 10
    async with runtime.db.read() as session:
        kinds = [
            (e.kind, e.amount, e.source)
            for e in await session.scalars(
                select(CreditEvent).where(CreditEvent.user_id == user.id).order_by(CreditEvent.id)
            )
        ]
    assert kinds == [
        ("grant", 7, "support"),
        ("grant", 1000, "plan_allowance"),
        ("consume", -10, "usage"),
    ]
    after = data_of(
        await gql("{ viewer { credits { available grants { id } } } }", token=user_token(user.id))
    )["viewer"]["credits"]
    assert after["available"] == 997
    assert not any(g["id"].startswith("pending-") for g in after["grants"])

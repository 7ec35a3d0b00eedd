"""Outgoing events, each caused over GraphQL/HTTP, written with the change that causes them."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from gateway.db import Database
from gateway.jobs import job_actor, run_jobs
from gateway.runtime import Runtime
from gateway.settings import Settings
from resolvers.catalog.model import load_catalog
from resolvers.models import OutgoingDelivery, OutgoingEvent
from tests.factories import make_user
from tests.fakes.webhook_receiver import SECRET
from tests.schema.conftest import JWT_SECRET, GraphQLClient, data_of, error_codes, user_token

ENDPOINTS = ("http://127.0.0.1:9/a", "http://127.0.0.1:9/b")

CONSUME = """mutation($userId: ID!, $amount: Int!) {
  consumeCredits(input: {userId: $userId, amount: $amount}) { __typename } }"""
GRANT = """mutation($userId: ID!, $amount: Int!, $expiresAt: DateTime) {
  grantCredits(input: {userId: $userId, amount: $amount, reason: "gift", expiresAt: $expiresAt})
  { __typename } }"""
SET_TIER = """mutation($userId: ID!, $tier: String!) {
  setTier(input: {userId: $userId, tier: $tier, reason: "support"}) { __typename } }"""
THRESHOLD = """mutation($userId: ID!, $threshold: Int) {
  setLowBalanceThreshold(input: {userId: $userId, threshold: $threshold}) {
    __typename ... on LowBalanceThresholdSet { threshold effectiveThreshold }
    ... on InvalidInput { code field } } }"""
USAGE = """mutation($userId: ID!, $quantity: Int!) {
  recordUsage(input: {userId: $userId, feature: "pdf_exports", quantity: $quantity}) {
    __typename } }"""
RESERVE = """mutation($userId: ID!) {
  reserveCredits(input: {userId: $userId, amount: 95, reason: "call", ttlSeconds: 60}) {
    __typename } }"""
DELIVERIES = """query($first: Int, $after: String, $status: OutgoingDeliveryStatus) {
  outgoingDeliveries(first: $first, after: $after, status: $status) {
    edges { node { id messageId type endpoint status attempts payload user { email } } }
    pageInfo { hasNextPage endCursor } } }"""


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        jwt_secret=JWT_SECRET,
        outgoing_webhook_urls=ENDPOINTS,
        outgoing_webhook_secret=SECRET,
        credits_expiring_soon_days=7,
    )


@pytest.fixture
async def support(make_key: Any) -> str:
    return await make_key("support")


async def events(runtime: Runtime, user_id: int) -> list[tuple[str, dict[str, Any]]]:
    async with runtime.db.read() as session:
        rows = (
            await session.execute(
                select(OutgoingEvent)
                .where(OutgoingEvent.user_id == user_id)
                .order_by(OutgoingEvent.id)
            )
        ).scalars()
        return [(row.type, row.payload["data"]) for row in rows]


async def send(gql: GraphQLClient, key: str, query: str, **variables: Any) -> dict[str, Any]:
    return data_of(await gql(query, variables, token=key))


async def test_low_balance_is_told_once_per_crossing_and_depleted_at_zero(
    runtime: Runtime, gql: GraphQLClient, support: str
) -> None:
    user = await make_user(runtime, credits_granted=100, calendar_allowances=False)
    uid = str(user.id)
    await send(gql, support, CONSUME, userId=uid, amount=85)  # 15: free's threshold is 10
    assert await events(runtime, user.id) == []
    await send(gql, support, CONSUME, userId=uid, amount=6)  # 9: under it
    await send(gql, support, CONSUME, userId=uid, amount=4)  # 5: still under, not told again
    assert [t for t, _ in await events(runtime, user.id)] == ["credits.low_balance"]
    _, data = (await events(runtime, user.id))[0]
    assert data == {"userId": uid, "email": user.email, "available": 9, "threshold": 10}

    await send(gql, support, GRANT, userId=uid, amount=20)  # 25: above again, re-armed
    await send(gql, support, CONSUME, userId=uid, amount=25)  # 0: under, and depleted
    types = [t for t, _ in await events(runtime, user.id)]
    assert types == ["credits.low_balance", "credits.low_balance", "credits.depleted"]


async def test_a_refused_change_writes_no_event_and_each_event_goes_to_every_endpoint(
    runtime: Runtime, gql: GraphQLClient, support: str
) -> None:
    user = await make_user(runtime, credits_granted=20, calendar_allowances=False)
    refused = await send(gql, support, CONSUME, userId=str(user.id), amount=500)
    assert refused["consumeCredits"]["__typename"] == "InsufficientCredits"
    assert await events(runtime, user.id) == []

    await send(gql, support, CONSUME, userId=str(user.id), amount=20)
    async with runtime.db.read() as session:
        endpoints = (
            await session.execute(
                select(OutgoingDelivery.endpoint).where(OutgoingDelivery.user_id == user.id)
            )
        ).scalars()
        assert sorted(endpoints) == sorted(ENDPOINTS * 2)  # low_balance and depleted


async def test_support_sets_a_users_own_threshold_and_bad_input_changes_nothing(
    runtime: Runtime, gql: GraphQLClient, support: str
) -> None:
    user = await make_user(runtime, credits_granted=100, calendar_allowances=False)
    uid = str(user.id)
    bad = await send(gql, support, THRESHOLD, userId=uid, threshold=-1)
    assert bad["setLowBalanceThreshold"] == {
        "__typename": "InvalidInput",
        "code": "INVALID_INPUT",
        "field": "threshold",
    }
    set_ = await send(gql, support, THRESHOLD, userId=uid, threshold=60)
    assert set_["setLowBalanceThreshold"]["effectiveThreshold"] == 60
    await send(gql, support, CONSUME, userId=uid, amount=45)  # 55 < 60
    assert await events(runtime, user.id) == [
        (
            "credits.low_balance",
            {"userId": uid, "email": user.email, "available": 55, "threshold": 60},
        )
    ]
    back = await send(gql, support, THRESHOLD, userId=uid, threshold=None)
    assert back["setLowBalanceThreshold"] == {
        "__typename": "LowBalanceThresholdSet",
        "threshold": None,
        "effectiveThreshold": 10,
    }
    viewer = await gql(THRESHOLD, {"userId": uid, "threshold": 5}, token=user_token(user.id))
    assert error_codes(viewer) == ["FORBIDDEN"]


async def test_tier_changed_and_limit_reached(
    runtime: Runtime, gql: GraphQLClient, support: str
) -> None:
    user = await make_user(runtime, calendar_allowances=False)
    uid = str(user.id)
    await send(gql, support, SET_TIER, userId=uid, tier="pro")
    await send(gql, support, SET_TIER, userId=uid, tier="pro")  # unchanged: no event
    tiers = [d for t, d in await events(runtime, user.id) if t == "tier.changed"]
    assert [(d["fromTier"], d["toTier"]) for d in tiers] == [("free", "pro")]

    await send(gql, support, SET_TIER, userId=uid, tier="free")  # pdf_exports: 5 a month
    await send(gql, support, USAGE, userId=uid, quantity=3)
    await send(gql, support, USAGE, userId=uid, quantity=2)  # 5 of 5: reached
    over = await send(gql, support, USAGE, userId=uid, quantity=1)
    assert over["recordUsage"]["__typename"] == "LimitExceeded"
    reached = [d for t, d in await events(runtime, user.id) if t == "entitlement.limit_reached"]
    assert reached == [
        {"userId": uid, "email": user.email, "feature": "pdf_exports", "limit": 5, "usage": 5}
    ]


async def test_hold_expired_comes_from_the_sweep(
    runtime: Runtime, gql: GraphQLClient, support: str, clock: Any
) -> None:
    user = await make_user(runtime, credits_granted=100, calendar_allowances=False)
    reserved = await send(gql, support, RESERVE, userId=str(user.id))
    assert reserved["reserveCredits"]["__typename"] == "CreditHold"
    # 5 left available while held: under free's 10.
    assert [t for t, _ in await events(runtime, user.id)] == ["credits.low_balance"]
    clock.advance(seconds=61)
    report = await run_jobs(runtime, actor=job_actor(), dispatcher=None)
    assert report.holds.holds == 1
    types = [t for t, _ in await events(runtime, user.id)]
    assert types == ["credits.low_balance", "hold.expired"]
    assert (await events(runtime, user.id))[1][1]["available"] == 100


async def test_expiring_soon_once_per_grant_with_credits_left(
    runtime: Runtime, gql: GraphQLClient, support: str, clock: Any
) -> None:
    user = await make_user(runtime, calendar_allowances=False)
    uid = str(user.id)
    soon = (clock.now + timedelta(days=3)).isoformat()
    later = (clock.now + timedelta(days=30)).isoformat()
    await send(gql, support, GRANT, userId=uid, amount=40, expiresAt=soon)
    await send(gql, support, GRANT, userId=uid, amount=30, expiresAt=later)
    spent = await make_user(runtime, calendar_allowances=False)
    await send(gql, support, GRANT, userId=str(spent.id), amount=40, expiresAt=soon)
    await send(gql, support, CONSUME, userId=str(spent.id), amount=40)

    for _ in range(2):  # a second sweep tells nothing new
        await run_jobs(runtime, actor=job_actor(), dispatcher=None)
    expiring = [d for t, d in await events(runtime, user.id) if t == "credits.expiring_soon"]
    assert [(d["credits"], d["expiresAt"][:19]) for d in expiring] == [(40, soon[:19])]
    assert not [t for t, _ in await events(runtime, spent.id) if t == "credits.expiring_soon"]

    clock.advance(days=24)  # the 30-day grant is now 6 days away
    report = await run_jobs(runtime, actor=job_actor(), dispatcher=None)
    assert report.expiring_soon == 1
    expiring = [d for t, d in await events(runtime, user.id) if t == "credits.expiring_soon"]
    assert [d["credits"] for d in expiring] == [40, 30]


async def test_outgoing_deliveries_are_for_support_and_page_by_cursor(
    runtime: Runtime, gql: GraphQLClient, support: str, make_key: Any
) -> None:
    user = await make_user(runtime, credits_granted=30, calendar_allowances=False)
    await send(gql, support, CONSUME, userId=str(user.id), amount=30)  # 2 events x 2 endpoints
    first = (await send(gql, support, DELIVERIES, first=3))["outgoingDeliveries"]
    assert first["pageInfo"]["hasNextPage"] is True
    rest = await send(gql, support, DELIVERIES, first=3, after=first["pageInfo"]["endCursor"])
    nodes = [e["node"] for e in first["edges"] + rest["outgoingDeliveries"]["edges"]]
    assert len(nodes) == 4 and len({n["id"] for n in nodes}) == 4
    assert {n["type"] for n in nodes} == {"credits.low_balance", "credits.depleted"}
    assert all(n["status"] == "PENDING" and n["attempts"] == 0 for n in nodes)
    assert all(n["user"]["email"] == user.email for n in nodes)
    assert nodes[0]["payload"]["type"] == nodes[0]["type"]
    delivered = await send(gql, support, DELIVERIES, status="DELIVERED")
    assert delivered["outgoingDeliveries"]["edges"] == []

    for role in ("service", "dashboard"):
        body = await gql(DELIVERIES, {}, token=await make_key(role, f"{role}-x"))
        assert error_codes(body) == ["FORBIDDEN"]
    bad = await gql(DELIVERIES, {"after": "nonsense"}, token=support)
    assert error_codes(bad) == ["BAD_USER_INPUT"]


RETRY = """mutation($id: ID!) { retryOutgoingDelivery(id: $id) {
  __typename ... on OutgoingDelivery { id status attempts nextAttemptAt }
  ... on DeliveryNotFound { code deliveryId } } }"""


async def test_support_sends_a_delivery_again_from_graphql(
    runtime: Runtime, gql: GraphQLClient, support: str, make_key: Any
) -> None:
    user = await make_user(runtime, credits_granted=30, calendar_allowances=False)
    await send(gql, support, CONSUME, userId=str(user.id), amount=30)
    async with runtime.db.read() as session:
        delivery = (await session.scalars(select(OutgoingDelivery).limit(1))).one()
    runtime.clock.advance(hours=1)
    await runtime.db.write(lambda s: _mark_failed(s, delivery.id))
    again = (await send(gql, support, RETRY, id=str(delivery.id)))["retryOutgoingDelivery"]
    assert again["__typename"] == "OutgoingDelivery" and again["id"] == str(delivery.id)
    assert again["status"] == "PENDING"
    assert again["nextAttemptAt"].startswith(runtime.clock().isoformat()[:19])
    for missing in ("999999", "not-an-id"):
        answer = (await send(gql, support, RETRY, id=missing))["retryOutgoingDelivery"]
        assert answer["__typename"] == "DeliveryNotFound"
        assert (answer["code"], answer["deliveryId"]) == ("DELIVERY_NOT_FOUND", missing)
    for role in ("service", "dashboard"):
        body = await gql(RETRY, {"id": str(delivery.id)}, token=await make_key(role, f"{role}-r"))
        assert error_codes(body) == ["FORBIDDEN"]


async def _mark_failed(session: Any, delivery_id: int) -> None:
    row = await session.get(OutgoingDelivery, delivery_id)
    row.status = "failed"


async def test_no_events_without_outgoing_webhooks(database_url: str, clock: Any) -> None:
    plain = Settings(database_url=database_url)
    runtime = Runtime(
        settings=plain,
        db=Database(database_url, pool_size=2),
        catalog=load_catalog(plain.catalog_path),
        clock=clock,
    )
    try:
        user = await make_user(runtime, credits_granted=5, calendar_allowances=False)
        assert await events(runtime, user.id) == []
    finally:
        await runtime.close()


async def test_concurrent_spends_tell_each_crossing_once(
    runtime: Runtime, gql: GraphQLClient, support: str
) -> None:
    user = await make_user(runtime, credits_granted=100, calendar_allowances=False)
    answers = await asyncio.gather(
        *(send(gql, support, CONSUME, userId=str(user.id), amount=5) for _ in range(20))
    )
    assert {a["consumeCredits"]["__typename"] for a in answers} == {"CreditChange"}
    types = [t for t, _ in await events(runtime, user.id)]
    assert types == ["credits.low_balance", "credits.depleted"]

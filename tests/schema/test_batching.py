"""Reads batch through per-request dataloaders: statement count does not grow with list length."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import create_app
from resolvers.models import Payment
from tests.conftest import StatementCounter
from tests.factories import make_user
from tests.schema.conftest import GraphQLClient, data_of

SUPPORT_QUERY = """
{ users(first: 100) { edges { node {
    email
    credits { available }
    creditEvents(first: 5) { edges { node { amount } } }
    payments(first: 3) { edges { node { amount } } }
} } } }
"""


@pytest.fixture(params=["compiled", "graphql-core"])
async def gql(runtime, request) -> AsyncIterator[GraphQLClient]:
    """Each executor alone: running both (as the other tests do) would count statements twice."""
    transport = httpx.ASGITransport(app=create_app(runtime, executor=request.param))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        yield GraphQLClient(http)


async def add_users(runtime, count: int) -> None:
    for _ in range(count):
        user = await make_user(runtime, credits_granted=10)

        async def pay(session, user_id=user.id):
            for n in range(4):
                session.add(
                    Payment(
                        user_id=user_id,
                        kind="credit_pack",
                        stripe_object_id=f"cs_{user_id}_{n}",
                        amount=500,
                        currency="EUR",
                        status="succeeded",
                        amount_refunded=0,
                        credits_granted=100,
                        credits_revoked=0,
                        credits_unrecovered=0,
                        created_at=runtime.clock(),
                    )
                )

        await runtime.db.write(pay)


@pytest.mark.slow
async def test_support_query_statement_count_does_not_grow(runtime, gql, make_key, db) -> None:
    support = await make_key("support")
    counter = StatementCounter(db)
    try:
        await add_users(runtime, 10)
        await gql("{ plans { code } }", token=support)  # the key is looked up once, then cached
        counter.reset()
        small = data_of(await gql(SUPPORT_QUERY, token=support))
        at_ten = counter.count
        await add_users(runtime, 90)
        counter.reset()
        large = data_of(await gql(SUPPORT_QUERY, token=support))
        at_hundred = counter.count
    finally:
        counter.close()
    assert len(small["users"]["edges"]) == 10
    assert len(large["users"]["edges"]) == 100
    node = large["users"]["edges"][-1]["node"]
    assert node["credits"]["available"] == 10
    assert len(node["creditEvents"]["edges"]) == 1
    assert len(node["payments"]["edges"]) == 3
    # Users, their events, their payments: three statements, none per user.
    assert at_ten == at_hundred == 3, (at_ten, at_hundred)


async def test_premium_overlay_in_a_list_is_one_statement(runtime, gql, make_key, db) -> None:
    support = await make_key("support")
    query = (
        '{ users(first: 50) { edges { node { premiumOverlay(sessionId: "s") { eligible } } } } }'
    )
    counts = []
    for total in (5, 50):
        while (
            len(
                data_of(await gql("{ users(first: 100) { edges { cursor } } }", token=support))[
                    "users"
                ]["edges"]
            )
            < total
        ):
            await make_user(runtime)
        counter = StatementCounter(db)
        try:
            body = data_of(await gql(query, token=support))
        finally:
            counter.close()
        assert len(body["users"]["edges"]) == total
        counts.append(counter.count)
    assert counts[0] == counts[1] == 2, counts  # the users, then every overlay at once

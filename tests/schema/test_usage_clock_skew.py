"""Metered usage when gateway processes' clocks disagree across a period boundary, over HTTP.

Two gateways share one database: one whose clock has passed the month's end, one still a
second before it. The one behind must not reset the count the one ahead stored for the new
period.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.db import Database
from gateway.runtime import Runtime
from resolvers.ledger import allowances
from tests.conftest import Clock
from tests.factories import make_user
from tests.schema.conftest import GraphQLClient, data_of, user_token

RECORD = """
mutation ($input: RecordUsageInput!) {
  recordUsage(input: $input) {
    __typename
    ... on EntitlementUsage { quantity entitlement { usage remaining } }
    ... on LimitExceeded { limit usage requested }
  }
}"""
EXPORTS = """
{ viewer { entitlement(feature: "pdf_exports") { usage remaining resetsAt } } }
"""


@pytest.fixture
def month_end(clock: Clock) -> Any:
    """The end of the month the test starts in: the boundary the two clocks straddle."""
    return allowances.allowance_period(clock.now)[1]


@pytest.fixture
async def ahead(runtime: Runtime, month_end: Any) -> AsyncIterator[GraphQLClient]:
    """A second gateway on the same database, its clock a second into the next month."""
    other = Runtime(
        settings=runtime.settings,
        db=Database(runtime.settings.database_url, pool_size=2),
        catalog=runtime.catalog,
        clock=Clock(month_end + timedelta(seconds=1)),
    )
    transport = httpx.ASGITransport(app=create_app(other, executor="both"))
    async with httpx.AsyncClient(transport=transport, base_url="http://ahead.test") as http:
        yield GraphQLClient(http)
    await other.close()


async def record(gql: GraphQLClient, key: str, user_id: int, quantity: int) -> dict[str, Any]:
    fields = {"userId": str(user_id), "feature": "pdf_exports", "quantity": quantity}
    return data_of(await gql(RECORD, {"input": fields}, token=key))["recordUsage"]


async def exports(gql: GraphQLClient, user_id: int) -> dict[str, Any]:
    body = await gql(EXPORTS, token=user_token(user_id))
    return data_of(body)["viewer"]["entitlement"]


async def test_a_gateway_behind_counts_against_the_newer_period_instead_of_resetting_it(
    runtime: Runtime, gql: GraphQLClient, ahead: GraphQLClient, clock: Clock, month_end, make_key
) -> None:
    service = await make_key("service")
    clock.now = month_end - timedelta(seconds=3)
    user = await make_user(runtime)  # free: 5 PDF exports a month
    behind = gql
    assert (await record(behind, service, user.id, 2))["entitlement"]["usage"] == 2
    clock.now = month_end - timedelta(seconds=1)

    # The gateway ahead starts the new month's count.
    counted = await record(ahead, service, user.id, 4)
    assert counted["entitlement"] == {"usage": 4, "remaining": 1}

    # The one behind, still in the old month by its clock, counts against that new month.
    counted = await record(behind, service, user.id, 1)
    assert counted["entitlement"] == {"usage": 5, "remaining": 0}
    refused = await record(behind, service, user.id, 1)
    assert refused == {"__typename": "LimitExceeded", "limit": 5, "usage": 5, "requested": 1}
    next_end = allowances.allowance_period(month_end)[1].isoformat()
    assert await exports(behind, user.id) == {"usage": 5, "remaining": 0, "resetsAt": next_end}
    assert await exports(ahead, user.id) == {"usage": 5, "remaining": 0, "resetsAt": next_end}
    assert (await record(ahead, service, user.id, 1))["__typename"] == "LimitExceeded"

    # Once its clock reaches the new month too, it goes on counting there: nothing was lost.
    clock.now = month_end + timedelta(seconds=2)
    back = await record(behind, service, user.id, -2)
    assert back["entitlement"] == {"usage": 3, "remaining": 2}
    assert await exports(ahead, user.id) == {"usage": 3, "remaining": 2, "resetsAt": next_end}


async def test_a_gateway_ahead_still_starts_the_new_period_at_zero(
    runtime: Runtime, gql: GraphQLClient, ahead: GraphQLClient, clock: Clock, month_end, make_key
) -> None:
    service = await make_key("service")
    clock.now = month_end - timedelta(seconds=3)
    user = await make_user(runtime)
    assert (await record(gql, service, user.id, 5))["entitlement"]["remaining"] == 0
    assert (await record(gql, service, user.id, 1))["__typename"] == "LimitExceeded"

    # The old month's count is the past for the gateway ahead, and the past for the one behind
    # is still its present: each reads its own period.
    assert (await exports(ahead, user.id))["usage"] == 0
    assert (await exports(gql, user.id))["usage"] == 5
    counted = await record(ahead, service, user.id, 3)
    assert counted["entitlement"] == {"usage": 3, "remaining": 2}

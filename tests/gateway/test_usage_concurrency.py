"""Usage limits under real concurrency: two gateway processes count one user's usage at once.

Over HTTP against two `entitlements serve` processes sharing one database (SQLite file and
PostgreSQL): the limit is never passed, and one idempotency key counts once. On PostgreSQL a
user named by id is counted by the one-statement `record_usage` function
(resolvers/entitlements/counting.py), by email through the Python rule: both are raced here.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from gateway.runtime import Runtime
from resolvers import keys
from resolvers.models import UsageEvent, User
from tests.factories import make_user
from tests.gateway.gateway_process import two_served

RECORD = """
mutation ($input: RecordUsageInput!) {
  recordUsage(input: $input) {
    __typename
    ... on EntitlementUsage { replayed entitlement { usage } }
  }
}
"""


@pytest.fixture
def two_gateways(database_url: str, tmp_path: Path) -> Iterator[list[str]]:
    with two_served(database_url, tmp_path) as bases:
        yield bases


async def fire(bases: list[str], key: str, inputs: list[dict]) -> list[dict]:
    """Every input at once, alternating between the gateways."""
    headers = {"Authorization": f"Bearer {key}"}
    # 16 in flight: enough to overlap, and within what a shared PostgreSQL server has to spare.
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=16)) as http:
        responses = await asyncio.gather(
            *(
                http.post(
                    f"{bases[i % len(bases)]}/graphql",
                    json={"query": RECORD, "variables": {"input": body}},
                    headers=headers,
                )
                for i, body in enumerate(inputs)
            )
        )
    for response in responses:
        assert response.status_code == 200, response.text
        assert "errors" not in response.json(), response.text
    return [r.json()["data"]["recordUsage"] for r in responses]


async def service_key(runtime: Runtime) -> str:
    now = runtime.clock()
    created = await runtime.db.write(
        lambda s: keys.create_api_key(s, name="ai-backend", role="service", now=now)
    )
    return created.secret


async def stored_usage(runtime: Runtime, user_id: int, feature: str) -> tuple[int, int]:
    """(the count the limit is checked on, the sum of the usage record)."""
    async with runtime.db.read() as session:
        usage = await session.scalar(select(User.entitlement_usage).where(User.id == user_id))
        recorded = await session.scalar(
            select(func.coalesce(func.sum(UsageEvent.quantity), 0)).where(
                UsageEvent.user_id == user_id, UsageEvent.feature == feature
            )
        )
    # No use counted yet (every key of a race went to the other kind of change): no entry.
    counted = (usage or {}).get(feature)
    return (0 if counted is None else counted["used"]), recorded


def statements_per_answer(bases: list[str]) -> Counter[float]:
    """How many /graphql answers of both gateways took at most n SQL statements, by n."""
    at_most: Counter[float] = Counter()
    for base in bases:
        families = text_string_to_metric_families(httpx.get(f"{base}/metrics").text)
        for family in families:
            if family.name != "entitlements_sql_statements_per_request":
                continue
            for sample in family.samples:
                if sample.name.endswith("_bucket") and sample.labels["path"] == "/graphql":
                    at_most[float(sample.labels["le"])] += sample.value
    return at_most


@pytest.mark.slow
async def test_two_gateways_never_count_usage_past_the_limit(
    runtime: Runtime, two_gateways: list[str], backend: str
) -> None:
    key = await service_key(runtime)
    user = await make_user(runtime)  # free: 5 PDF exports a month
    inputs = [{"userId": str(user.id), "feature": "pdf_exports"} for _ in range(40)]
    answers = await fire(two_gateways, key, inputs)

    assert Counter(a["__typename"] for a in answers) == {
        "EntitlementUsage": 5,
        "LimitExceeded": 35,
    }
    # Each counted use saw the one before it: 1, 2, ... 5 without a gap or a repeat.
    counted = sorted(a["entitlement"]["usage"] for a in answers if a.get("entitlement"))
    assert counted == [1, 2, 3, 4, 5]
    assert await stored_usage(runtime, user.id, "pdf_exports") == (5, 5)
    if backend == "postgresql":
        # The function counted every use: one statement each (two with the API key's first
        # lookup), where the Python rule's counted uses take three (lock, UPDATE, INSERT).
        at_most = statements_per_answer(two_gateways)
        assert at_most[float("inf")] == 40 and at_most[2.0] == 40, at_most


@pytest.mark.slow
@pytest.mark.parametrize("named_by", ["email", "userId"])
async def test_one_key_sent_to_two_gateways_at_once_counts_once(
    runtime: Runtime, two_gateways: list[str], named_by: str
) -> None:
    key = await service_key(runtime)
    user = await make_user(runtime, tier="pro")
    ref = {"email": user.email} if named_by == "email" else {"userId": str(user.id)}
    body = {**ref, "feature": "projects", "quantity": 2, "idempotencyKey": "p-77"}
    answers = await fire(two_gateways, key, [body] * 20)

    assert all(a["__typename"] == "EntitlementUsage" for a in answers), answers
    assert sorted(a["replayed"] for a in answers) == [False] + [True] * 19
    assert await stored_usage(runtime, user.id, "projects") == (2, 2)


CONSUME = """
mutation ($input: ConsumeCreditsInput!) {
  consumeCredits(input: $input) { __typename }
}
"""


@pytest.mark.slow
async def test_usage_and_a_spend_racing_for_one_key_take_effect_once(
    runtime: Runtime, two_gateways: list[str]
) -> None:
    key = await service_key(runtime)
    user = await make_user(runtime, tier="pro", credits_granted=100)
    ref = {"userId": str(user.id)}
    # For each key a usage report to one gateway and a spend (by id: PostgreSQL's one-statement
    # spend) to the other, all at once.
    requests = []
    for n in range(12):
        usage = {**ref, "feature": "projects", "idempotencyKey": f"job-{n}"}
        spend = {**ref, "amount": 1, "reason": "ai call", "idempotencyKey": f"job-{n}"}
        requests += [(RECORD, "recordUsage", usage), (CONSUME, "consumeCredits", spend)]
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=16)) as http:
        responses = await asyncio.gather(
            *(
                http.post(
                    f"{two_gateways[i % 2]}/graphql",
                    json={"query": query, "variables": {"input": body}},
                    headers=headers,
                )
                for i, (query, _, body) in enumerate(requests)
            )
        )
    answers: dict[str, list[str]] = {}
    for (_, name, body), response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        answers.setdefault(body["idempotencyKey"], []).append(
            response.json()["data"][name]["__typename"]
        )

    for taken in answers.values():
        assert sorted(taken) in (
            ["EntitlementUsage", "IdempotencyConflict"],
            ["CreditChange", "IdempotencyConflict"],
        ), answers
    counted = sum("EntitlementUsage" in taken for taken in answers.values())
    spent = sum("CreditChange" in taken for taken in answers.values())
    assert await stored_usage(runtime, user.id, "projects") == (counted, counted)
    async with runtime.db.read() as session:
        balance = await session.scalar(select(User.credits_available).where(User.id == user.id))
    assert balance == 100 - spent

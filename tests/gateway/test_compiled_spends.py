"""Compiled spends under real concurrency: two gateway processes spend one balance at once.

The gateways run as operators run them (`entitlements serve`, executor "compiled"), and the
document's answer is one the plan covers, so each spend is written by the compiled executor and
answered from its plan. A balance of 100 gives exactly 100 spends of 1, every balance after a
spend is seen once, the ledger adds up, and one idempotency key sent many times spends once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import parse
from sqlalchemy import func, select

from gateway.compiled.plan import compile_operation
from gateway.runtime import Runtime
from resolvers.models import CreditEvent, CreditGrant, User
from schema import schema
from tests.factories import make_user
from tests.gateway.test_usage_concurrency import service_key, two_gateways

__all__ = ["two_gateways"]  # the fixture, used by name

SPEND = """
mutation Spend($input: ConsumeCreditsInput!) {
  consumeCredits(input: $input) {
    __typename
    ... on CreditChange { replayed event { id balanceAfter } user { credits { available } } }
    ... on InsufficientCredits { available requested }
  }
}
"""


async def spend_all(bases: list[str], key: str, inputs: list[dict[str, Any]]) -> list[Any]:
    """Every spend at once, alternating between the gateways."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=16)) as http:
        responses = await asyncio.gather(
            *(
                http.post(
                    f"{bases[i % len(bases)]}/graphql",
                    json={"query": SPEND, "variables": {"input": body}},
                    headers=headers,
                )
                for i, body in enumerate(inputs)
            )
        )
    for response in responses:
        assert response.status_code == 200, response.text
        assert "errors" not in response.json(), response.text
    return [r.json()["data"]["consumeCredits"] for r in responses]


async def ledger(runtime: Runtime, user_id: int) -> tuple[int, int, int, int]:
    """(the balance on the row, what the grants have left, the spends, their sum)."""
    async with runtime.db.read() as session:
        balance = await session.scalar(select(User.credits_available).where(User.id == user_id))
        left = await session.scalar(
            select(func.sum(CreditGrant.remaining)).where(CreditGrant.user_id == user_id)
        )
        spends, spent = (
            await session.execute(
                select(func.count(), func.coalesce(func.sum(CreditEvent.amount), 0)).where(
                    CreditEvent.user_id == user_id, CreditEvent.kind == "consume"
                )
            )
        ).one()
    return int(balance), int(left or 0), int(spends), int(spent)


def plan_failures(logs: Path) -> list[str]:
    return [
        line
        for log in logs.glob("serve-*.log")
        for line in log.read_text().splitlines()
        if "compiled plan failed" in line
    ]


@pytest.mark.slow
async def test_two_gateways_spend_a_balance_of_100_exactly_once_each(
    runtime: Runtime, two_gateways: list[str], tmp_path: Path
) -> None:
    assert compile_operation(schema._schema, parse(SPEND), None) is not None
    key = await service_key(runtime)
    user = await make_user(runtime, credits_granted=100, calendar_allowances=False)
    answers = await spend_all(two_gateways, key, [{"userId": str(user.id), "amount": 1}] * 140)

    assert Counter(a["__typename"] for a in answers) == {
        "CreditChange": 100,
        "InsufficientCredits": 40,
    }
    # Each spend saw the one before it: 99, 98, ... 0 without a gap or a repeat.
    after = sorted(a["event"]["balanceAfter"] for a in answers if "event" in a)
    assert after == list(range(100))
    assert len({a["event"]["id"] for a in answers if "event" in a}) == 100
    assert all(
        (a["available"], a["requested"]) == (0, 1)
        for a in answers
        if a["__typename"] == "InsufficientCredits"
    )
    assert await ledger(runtime, user.id) == (0, 0, 100, -100)
    # No plan failed over to graphql-core on the way (route logs each such failure).
    assert await asyncio.to_thread(plan_failures, tmp_path) == []


@pytest.mark.slow
async def test_one_key_sent_to_two_gateways_many_times_spends_once(
    runtime: Runtime, two_gateways: list[str]
) -> None:
    key = await service_key(runtime)
    user = await make_user(runtime, credits_granted=100, calendar_allowances=False)
    ref = {"userId": str(user.id)}
    keyed = {**ref, "amount": 3, "reason": "chat call-9", "idempotencyKey": "call-9"}
    # The keyed spend many times, among unkeyed spends of 1 that race it for the balance.
    inputs = [keyed if i % 2 == 0 else {**ref, "amount": 1} for i in range(60)]
    answers = await spend_all(two_gateways, key, inputs)

    keyed_answers = [a for body, a in zip(inputs, answers, strict=True) if body is keyed]
    assert all(a["__typename"] == "CreditChange" for a in answers), answers
    assert sorted(a["replayed"] for a in keyed_answers) == [False] + [True] * 29
    assert len({a["event"]["id"] for a in keyed_answers}) == 1
    assert await ledger(runtime, user.id) == (100 - 3 - 30, 100 - 3 - 30, 31, -33)

"""Two kinds of change racing with one idempotency key, sent to two gateway processes at once.

The race of tests/schema/test_key_races.py between two `entitlements serve` processes sharing
one database (SQLite file and PostgreSQL): each key's two calls go to different processes, so
only the database can make them take turns. Exactly one takes effect, the other is answered
IdempotencyConflict, and the statements a spend by user id takes stay what they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.runtime import Runtime
from resolvers import keys
from tests.factories import make_user
from tests.gateway.gateway_process import two_served
from tests.schema.key_races import (
    PAIRS,
    START_CREDITS,
    assert_one_effect_per_key,
    race_calls,
    send_all,
)

ROUNDS = 3
KEYS_PER_PAIR = 12


@pytest.fixture
def two_gateways(database_url: str, tmp_path: Path) -> Iterator[list[str]]:
    with two_served(database_url, tmp_path) as bases:
        yield bases


@pytest.mark.slow
async def test_two_gateways_take_one_key_of_two_kinds_of_change_once(
    runtime: Runtime, two_gateways: list[str]
) -> None:
    # A service key may not grant; the grants of the race need support's.
    key = await support_key(runtime)
    headers = {"Authorization": f"Bearer {key}"}
    # 16 in flight: enough to overlap, and within what a shared PostgreSQL server has to spare.
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=16)) as http:

        async def post(index: int, body: dict[str, Any]) -> httpx.Response:
            # A key's two calls are next to each other: one to each gateway.
            return await http.post(f"{two_gateways[index % 2]}/graphql", json=body, headers=headers)

        won_by: dict[str, int] = {}
        for round_ in range(ROUNDS):
            users = (
                await make_user(runtime, tier="pro", credits_granted=START_CREDITS),
                await make_user(runtime, tier="pro", credits_granted=START_CREDITS),
            )
            calls = race_calls(users, KEYS_PER_PAIR, tag=f"round-{round_}")
            answers = await send_all(post, calls)
            won = await assert_one_effect_per_key(runtime, calls, answers, users)
            for name, count in won.items():
                won_by[name] = won_by.get(name, 0) + count
    assert sum(won_by.values()) == ROUNDS * KEYS_PER_PAIR * len(PAIRS)


async def support_key(runtime: Runtime) -> str:
    now = runtime.clock()
    created = await runtime.db.write(
        lambda s: keys.create_api_key(s, name="support-desk", role="support", now=now)
    )
    return created.secret

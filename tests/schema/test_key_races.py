"""Two kinds of change racing with one idempotency key, as many tasks through the ASGI app.

Grants against usage counts, spends against holds, spends against grants: each key sent by
both kinds at once, for one user and for two. Exactly one takes effect; the other is answered
IdempotencyConflict (docs/design.md: a key used by a different operation is a conflict). On
PostgreSQL the spend and the count by user id are the one-statement functions, the grant and
the hold the Python rule: the race crosses both paths.
"""

from __future__ import annotations

from typing import Any

import httpx

from gateway.runtime import Runtime
from tests.factories import make_user
from tests.schema.conftest import GraphQLClient
from tests.schema.key_races import (
    PAIRS,
    START_CREDITS,
    assert_one_effect_per_key,
    race_calls,
    send_all,
)

ROUNDS = 3
KEYS_PER_PAIR = 12


async def test_two_kinds_of_change_racing_for_one_key_take_effect_once(
    runtime: Runtime, gql: GraphQLClient, make_key
) -> None:
    support = await make_key("support")

    async def post(_: int, body: dict[str, Any]) -> httpx.Response:
        return await gql.http.post(
            "/graphql", json=body, headers={"Authorization": f"Bearer {support}"}
        )

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

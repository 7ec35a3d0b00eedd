"""A spend runs on asyncpg past SQLAlchemy (PostgreSQL): a broken connection leaves the pool."""

from __future__ import annotations

import pytest

from gateway.db import DatabaseUnavailable
from gateway.runtime import Runtime
from resolvers.ledger import credits
from resolvers.ledger.entries import Actor
from resolvers.users import UserRef
from tests.conftest import kill_server_sessions
from tests.factories import make_user

USAGE = Actor(name="ai-backend", source="usage", request_id="req-killed")


async def spend(runtime: Runtime, user_id: int, key: str) -> object:
    return await runtime.db.write(
        lambda s: credits.consume_credits(
            s,
            user=UserRef(user_id=user_id),
            amount=1,
            reason="ai usage",
            actor=USAGE,
            now=runtime.clock(),
            catalog=runtime.catalog,
            idempotency_key=key,
        )
    )


async def test_spends_recover_after_the_servers_sessions_are_killed(
    runtime: Runtime, backend: str, database_url: str
) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has no server sessions to kill")
    user = await make_user(runtime, credits_granted=10)
    assert isinstance(await spend(runtime, user.id, "before"), credits.CreditChanged)

    assert await kill_server_sessions(database_url) >= 1

    # The pooled connection is dead: the spend after it may fail (as unavailable, retryable),
    # but it must not be lent again, so the spends after that succeed and count down.
    outcomes = []
    for attempt in range(3):
        try:
            outcomes.append(await spend(runtime, user.id, f"after-{attempt}"))
        except DatabaseUnavailable:
            outcomes.append(None)
    assert outcomes[0] is None or isinstance(outcomes[0], credits.CreditChanged)
    assert all(isinstance(o, credits.CreditChanged) for o in outcomes[1:]), outcomes
    assert outcomes[-1].user.credits_available == (10 - 1 - sum(o is not None for o in outcomes))

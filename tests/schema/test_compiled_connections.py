"""Compiled reads borrow the pool's connections past SQLAlchemy: killed sessions do not stick."""

from __future__ import annotations

import httpx
import pytest

from gateway.app import create_app
from gateway.runtime import Runtime
from tests.conftest import kill_server_sessions
from tests.factories import make_user
from tests.schema.conftest import user_token

VIEWER = "query Viewer { viewer { tier credits { available } } }"


async def test_viewer_reads_recover_after_the_servers_sessions_are_killed(
    runtime: Runtime, backend: str, database_url: str
) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has no server sessions to kill")
    user = await make_user(runtime, credits_granted=7)
    headers = {"Authorization": f"Bearer {user_token(user.id)}"}
    app = create_app(runtime)  # the production executor: compiled, graphql-core behind it
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        expected = {"data": {"viewer": {"tier": user.tier, "credits": {"available": 7}}}}
        first = await http.post("/graphql", json={"query": VIEWER}, headers=headers)
        assert first.json() == expected

        assert await kill_server_sessions(database_url) >= 1

        # One answer may be lost with the session (a 503 to retry); the next ones are whole.
        answers = [
            await http.post("/graphql", json={"query": VIEWER}, headers=headers) for _ in range(3)
        ]
        assert answers[0].status_code in (200, 503), answers[0].text
        assert [a.json() for a in answers[1:]] == [expected, expected]

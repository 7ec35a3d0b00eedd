"""A revoked API key stops working in running servers: within 1 s on PostgreSQL, 10 s on SQLite."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from gateway.app import create_app
from gateway.auth import KEY_CACHE_SECONDS
from gateway.revocations import APPLICATION_NAME
from gateway.runtime import Runtime
from resolvers import keys
from tests.conftest import asyncpg_dsn
from tests.gateway.test_serve import cli, served  # noqa: F401  (the uvicorn fixture)

QUERY = {"query": "{ users(first: 1) { edges { node { id } } } }"}
PUSHED_WITHIN_SECONDS = 1.0


def is_accepted(response: httpx.Response) -> bool:
    body = response.json()
    codes = [e["extensions"]["code"] for e in body.get("errors", [])]
    assert codes in ([], ["UNAUTHENTICATED"]), body
    return not codes


def test_a_key_revoked_with_the_cli_stops_working_in_a_running_server(
    served,  # noqa: F811
    backend,
) -> None:
    base, env = served
    created = cli(env, "keys", "create", "--role", "support", "--name", "to-revoke")
    assert created.returncode == 0, created.stderr
    headers = {"Authorization": f"Bearer {created.stdout.strip().splitlines()[-1]}"}
    with httpx.Client(base_url=base, headers=headers, timeout=5) as http:
        assert is_accepted(http.post("/graphql", json=QUERY))  # now in the server's cache
        revoked = cli(env, "keys", "revoke", "to-revoke")
        assert revoked.returncode == 0, revoked.stderr
        committed = time.monotonic()
        while is_accepted(http.post("/graphql", json=QUERY)):
            assert time.monotonic() - committed < KEY_CACHE_SECONDS + 1, "still accepted"
            time.sleep(0.05)
        refused_after = time.monotonic() - committed
    bound = PUSHED_WITHIN_SECONDS if backend == "postgresql" else KEY_CACHE_SECONDS
    assert refused_after <= bound


@pytest.fixture
async def served_in_process(runtime: Runtime, backend: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running (ASGITransport alone does not run it)."""
    if backend != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    app = create_app(runtime)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
            yield http


async def listener_pids(database_url: str) -> set[int]:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
            "AND datname = current_database()",
            APPLICATION_NAME,
        )
        return {row["pid"] for row in rows}
    finally:
        await connection.close()


async def make_and_use_key(runtime: Runtime, http: httpx.AsyncClient, name: str) -> dict:
    now = runtime.clock()
    created = await runtime.db.write(
        lambda s: keys.create_api_key(s, name=name, role="support", now=now)
    )
    headers = {"Authorization": f"Bearer {created.secret}"}
    assert is_accepted(await http.post("/graphql", json=QUERY, headers=headers))
    return headers


async def revoke_and_time_refusal(
    runtime: Runtime, http: httpx.AsyncClient, name: str, headers: dict
) -> float:
    now = runtime.clock()
    await runtime.db.write(lambda s: keys.revoke_api_key(s, name=name, now=now))
    committed = time.monotonic()
    while is_accepted(await http.post("/graphql", json=QUERY, headers=headers)):
        assert time.monotonic() - committed < KEY_CACHE_SECONDS + 1, "still accepted"
        await asyncio.sleep(0.05)
    return time.monotonic() - committed


async def test_the_listener_comes_back_after_its_connection_is_killed(
    runtime, served_in_process, database_url
) -> None:
    http = served_in_process
    (first,) = await listener_pids(database_url)
    headers = await make_and_use_key(runtime, http, "before-kill")
    assert await revoke_and_time_refusal(runtime, http, "before-kill", headers) <= 1.0

    admin = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
    finally:
        await admin.close()
    deadline = time.monotonic() + 10
    while not (pids := await listener_pids(database_url)) or first in pids:
        assert time.monotonic() < deadline, "the listener did not reconnect"
        await asyncio.sleep(0.05)

    headers = await make_and_use_key(runtime, http, "after-kill")
    assert await revoke_and_time_refusal(runtime, http, "after-kill", headers) <= 1.0

"""/healthz and /readyz through the ASGI app: ready only when the database answers at head."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from gateway import migrate
from gateway.app import create_app
from gateway.db import Database
from gateway.runtime import Runtime
from gateway.settings import Settings
from resolvers.catalog import load_catalog
from tests.conftest import pg_execute, postgres_admin_url, with_database


@asynccontextmanager
async def client_for(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield client


@asynccontextmanager
async def client_for_url(url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database_url=url)
    runtime = Runtime(
        settings=settings, db=Database(url), catalog=load_catalog(settings.catalog_path)
    )
    try:
        async with client_for(runtime) as client:
            yield client
    finally:
        await runtime.close()


@pytest.fixture
def unmigrated_database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'unmigrated.db'}"
        return
    request.getfixturevalue("postgres_database")  # skips like every PostgreSQL case
    admin = postgres_admin_url()
    name = f"entitlements_unmigrated_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    pg_execute(admin, f"CREATE DATABASE {name}")
    try:
        yield with_database(admin, name)
    finally:
        pg_execute(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_healthz_answers_ok(runtime: Runtime) -> None:
    async with client_for(runtime) as client:
        response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert response.headers["X-Request-ID"]


async def test_readyz_is_ok_at_the_migrations_head(runtime: Runtime) -> None:
    async with client_for(runtime) as client:
        response = await client.get("/readyz", headers={"X-Request-ID": "probe-1"})
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "revision": migrate.head_revision()}
    assert response.headers["X-Request-ID"] == "probe-1"


async def test_readyz_is_unavailable_on_an_unmigrated_database(
    unmigrated_database_url: str,
) -> None:
    async with client_for_url(unmigrated_database_url) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert migrate.head_revision() in response.json()["reason"]


async def test_readyz_is_unavailable_when_the_database_is_unreachable() -> None:
    # Nothing listens on port 1: the connection is refused at once.
    async with client_for_url("postgresql+asyncpg://postgres:pw@127.0.0.1:1/none") as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    # A reason for the operator, never a stack trace or the connection string.
    assert "Traceback" not in response.text and "pw@" not in response.text

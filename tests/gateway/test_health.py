"""/healthz and /readyz through the ASGI app: ready only when the database answers at head."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from gateway import migrate
from gateway.app import create_app
from gateway.db import Database
from gateway.runtime import Runtime
from gateway.settings import Settings
from resolvers.catalog.model import load_catalog


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
    empty_database_url: str,
) -> None:
    async with client_for_url(empty_database_url) as client:
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

"""DATABASE_READ_URL: saved dashboard queries read the replica; everything else the primary."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway import migrate
from gateway.app import create_app
from gateway.db import Database
from gateway.runtime import Runtime
from resolvers.catalog.model import load_catalog
from tests.conftest import in_thread
from tests.factories import make_user
from tests.schema.conftest import data_of


@pytest.fixture
def replica_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A second migrated database of the test's backend, standing in for a read replica."""
    if backend == "sqlite":
        path = tmp_path / "replica.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("empty_database_url")
    in_thread(migrate.upgrade, url)
    return url


@pytest.fixture
async def replica(replica_url: str, settings, clock) -> AsyncIterator[Runtime]:
    """The replica's own runtime, to put rows in it that the primary does not have."""
    rt = Runtime(
        settings=settings,
        db=Database(replica_url, pool_size=2),
        catalog=load_catalog(settings.catalog_path),
        clock=clock,
    )
    yield rt
    await rt.close()


async def test_saved_queries_read_the_replica_and_direct_queries_the_primary(
    runtime: Runtime, replica: Runtime, make_key
) -> None:
    for tier in ("pro", "pro", "free"):
        await make_user(replica, tier=tier)
    await make_user(runtime, tier="free")
    runtime.read_db = replica.db
    dashboard = await make_key("dashboard")
    support = await make_key("support")
    app = create_app(runtime)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
    ) as http:
        saved = await http.post(
            "/graphql",
            json={"id": "metrics_overview"},
            headers={"Authorization": f"Bearer {dashboard}"},
        )
        direct = await http.post(
            "/graphql",
            json={"query": "{ metrics { users { total } } }"},
            headers={"Authorization": f"Bearer {support}"},
        )
    users = data_of(saved.json())["metrics"]["users"]
    assert users["total"] == 3
    assert {p["tier"]: p["count"] for p in users["plans"] if p["count"]} == {"pro": 2, "free": 1}
    assert data_of(direct.json())["metrics"]["users"]["total"] == 1
    runtime.read_db = None  # the runtime fixture disposes its own database only

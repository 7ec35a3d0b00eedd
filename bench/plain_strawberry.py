"""A minimal Strawberry + asyncpg app: what the viewer read costs in plain Strawberry, no gateway.

`user(id) { tier credits { available } }` through Strawberry's own ASGI app, one asyncpg
statement per request from a pool of the baseline's size; no auth, no middleware, no caches.
Run as uvicorn's factory (`bench.plain_strawberry:create_app`), like the baseline.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import strawberry
from starlette.applications import Starlette
from starlette.routing import Route
from strawberry.asgi import GraphQL
from strawberry.types import Info

_USER = "SELECT tier, credits_available FROM users WHERE id = $1"


@strawberry.type
class Credits:
    available: int


@strawberry.type
class User:
    tier: str
    available: strawberry.Private[int]

    @strawberry.field
    def credits(self) -> Credits:
        return Credits(available=self.available)


@strawberry.type
class Query:
    @strawberry.field
    async def user(self, info: Info, id: int) -> User | None:
        pool: asyncpg.Pool = info.context["pool"]
        row = await pool.fetchrow(_USER, id)
        return None if row is None else User(tier=row["tier"], available=row["credits_available"])


class _App(GraphQL):
    def __init__(self, schema: strawberry.Schema, pool_holder: dict[str, Any]) -> None:
        super().__init__(schema, graphql_ide=None)
        self.pool_holder = pool_holder

    async def get_context(self, request: Any, response: Any) -> dict[str, Any]:
        return {"pool": self.pool_holder["pool"]}


def create_app() -> Starlette:
    dsn = os.environ["PLAIN_STRAWBERRY_DSN"]
    holder: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The baseline's budget (bench/baseline.py): 10 kept open, at most 20.
        async with asyncpg.create_pool(dsn, min_size=10, max_size=20) as pool:
            holder["pool"] = pool
            yield

    schema = strawberry.Schema(query=Query)
    return Starlette(
        routes=[Route("/graphql", _App(schema, holder), methods=["POST"])], lifespan=lifespan
    )

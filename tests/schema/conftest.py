"""GraphQL over real HTTP through the ASGI app: a client, API keys per role, end-user tokens."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest

from gateway.app import create_app
from gateway.runtime import Runtime
from gateway.settings import Settings
from resolvers import keys

JWT_SECRET = "test-secret-for-end-user-tokens-0123456789"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, jwt_secret=JWT_SECRET)


@dataclass
class GraphQLClient:
    http: httpx.AsyncClient

    async def post(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        return await self.http.post(
            "/graphql", json={"query": query, "variables": variables}, headers=all_headers
        )

    async def __call__(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
    ) -> dict[str, Any]:
        response = await self.post(query, variables, token=token)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
async def gql(runtime: Runtime) -> AsyncIterator[GraphQLClient]:
    # Every query the suite sends runs on both executors, and their answers must be equal.
    app = create_app(runtime, executor="both")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        yield GraphQLClient(http)


@pytest.fixture
def make_key(runtime: Runtime):
    async def make(role: str, name: str | None = None) -> str:
        now = runtime.clock()
        result = await runtime.db.write(
            lambda s: keys.create_api_key(s, name=name or f"{role}-key", role=role, now=now)
        )
        return result.secret

    return make


def user_token(sub: str | int, **claims: Any) -> str:
    payload = {"sub": str(sub), "exp": int(time.time()) + 3600, **claims}
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


def data_of(body: dict[str, Any]) -> dict[str, Any]:
    assert "errors" not in body, body
    return body["data"]


def error_codes(body: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors", [])]

"""CORS from CORS_ORIGINS: preflights from a listed origin are allowed, any other is not."""

from __future__ import annotations

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from tests.schema.conftest import JWT_SECRET

FRONTEND = "http://localhost:5173"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        jwt_secret=JWT_SECRET,
        cors_origins=(FRONTEND, "https://app.example.com"),
    )


def preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }


async def test_a_preflight_from_an_allowed_origin_gets_the_allow_headers(gql) -> None:
    response = await gql.http.options("/graphql", headers=preflight(FRONTEND))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == FRONTEND
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "access-control-allow-credentials" not in response.headers
    assert response.headers["x-request-id"]


async def test_a_preflight_from_another_origin_is_refused(gql) -> None:
    response = await gql.http.options("/graphql", headers=preflight("https://evil.example"))
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_a_request_from_an_allowed_origin_can_read_the_answer(gql) -> None:
    response = await gql.http.post(
        "/graphql", json={"query": "{ __typename }"}, headers={"Origin": FRONTEND}
    )
    assert response.json() == {"data": {"__typename": "Query"}}
    assert response.headers["access-control-allow-origin"] == FRONTEND
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
    other = await gql.http.post(
        "/graphql", json={"query": "{ __typename }"}, headers={"Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in other.headers


async def test_without_cors_origins_no_origin_is_allowed(runtime) -> None:
    plain = Settings(database_url=runtime.settings.database_url)
    runtime.settings = plain
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        response = await http.options("/graphql", headers=preflight(FRONTEND))
    assert response.status_code == 405
    assert "access-control-allow-origin" not in response.headers

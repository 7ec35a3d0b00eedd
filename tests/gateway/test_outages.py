"""A database that cannot be reached: 503 JSON with a code, the request id and Retry-After."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import stripe

from gateway.app import create_app
from gateway.db import Database
from gateway.runtime import Runtime
from gateway.settings import Settings
from resolvers.catalog.model import load_catalog
from tests.fakes import stripe_events as ev
from tests.gateway.test_serve import BIN, free_port
from tests.schema.conftest import JWT_SECRET, user_token

SECRET = "whsec_test_outage"
# Shaped like a real key, so that it is looked up in the database rather than refused at sight.
API_KEY = "ent_sup_" + "x" * 43


@pytest.fixture
def unreachable_url(backend: str, tmp_path: Path) -> str:
    """A URL of the test's backend that cannot be opened: a directory, or a closed port."""
    if backend == "sqlite":
        directory = tmp_path / "a-directory.db"
        directory.mkdir()
        return f"sqlite+aiosqlite:///{directory}"
    return f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/entitlements"


@pytest.fixture
async def client(unreachable_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        database_url=unreachable_url, jwt_secret=JWT_SECRET, stripe_webhook_secrets=(SECRET,)
    )
    runtime = Runtime(
        settings=settings,
        db=Database(unreachable_url, pool_size=2),
        catalog=load_catalog(settings.catalog_path),
    )
    transport = httpx.ASGITransport(app=create_app(runtime))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
            yield http
    finally:
        await runtime.close()


def assert_unavailable(response: httpx.Response, request_id: str) -> dict:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == request_id
    assert int(response.headers["retry-after"]) >= 1
    assert "Traceback" not in response.text and "postgres@" not in response.text
    return response.json()


def graphql_error(body: dict, request_id: str) -> dict:
    error = body["errors"][0]
    assert error["extensions"] == {"code": "DATABASE_UNAVAILABLE", "requestId": request_id}
    return error


async def test_api_key_request_is_503_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql",
        json={"query": "{ plans { code } }"},
        headers={"Authorization": f"Bearer {API_KEY}", "X-Request-ID": "outage-key"},
    )
    body = assert_unavailable(response, "outage-key")
    assert "cannot be reached" in graphql_error(body, "outage-key")["message"]


@pytest.mark.parametrize("claims", [{}, {"email": "new-user@example.com"}])
async def test_end_user_request_is_503_json(client: httpx.AsyncClient, claims: dict) -> None:
    # A user id is looked up by the query; an unseen email already at authentication.
    response = await client.post(
        "/graphql",
        json={"query": "{ viewer { email credits { available } } }"},
        headers={
            "Authorization": f"Bearer {user_token(7, **claims)}",
            "X-Request-ID": "outage-jwt",
        },
    )
    graphql_error(assert_unavailable(response, "outage-jwt"), "outage-jwt")


async def test_webhook_is_503_json_so_that_stripe_retries(client: httpx.AsyncClient) -> None:
    body = json.dumps(
        ev.stripe_event("customer.created", {"id": "cus_outage", "object": "customer"})
    )
    header = stripe.WebhookSignature.generate_signature_header(body, SECRET)
    response = await client.post(
        "/api/billing/webhook",
        content=body,
        headers={
            "Stripe-Signature": header,
            "Content-Type": "application/json",
            "X-Request-ID": "outage-hook",
        },
    )
    answer = assert_unavailable(response, "outage-hook")
    assert answer["code"] == "DATABASE_UNAVAILABLE" and answer["requestId"] == "outage-hook"


async def test_readyz_is_503_with_a_code(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz", headers={"X-Request-ID": "outage-probe"})
    answer = assert_unavailable(response, "outage-probe")
    assert answer["status"] == "unavailable"
    assert answer["code"] == "DATABASE_UNAVAILABLE" and answer["requestId"] == "outage-probe"


async def test_other_failures_outside_graphql_are_json_with_a_code(
    client: httpx.AsyncClient,
) -> None:
    missing = await client.get("/nowhere", headers={"X-Request-ID": "lost-1"})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "lost-1"
    assert missing.json() == {"error": "Not Found", "code": "NOT_FOUND", "requestId": "lost-1"}
    wrong = await client.delete("/graphql")
    assert wrong.status_code == 405 and wrong.headers["allow"]
    assert wrong.json()["errors"][0]["extensions"]["code"] == "METHOD_NOT_ALLOWED"
    too_big = await client.post(
        "/api/billing/webhook", content=b"x" * 1_100_000, headers={"X-Request-ID": "big-1"}
    )
    assert too_big.status_code == 413
    assert too_big.json()["code"] == "BODY_TOO_LARGE" and too_big.json()["requestId"] == "big-1"


def test_a_real_server_keeps_the_connection_during_an_outage(tmp_path: Path) -> None:
    port, closed = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{closed}/entitlements",
        "LOG_FORMAT": "json",
    }
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "entitlements"), "serve", "--port", str(port), "--no-migrate"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((tmp_path / "serve.log").read_text())
            time.sleep(0.2)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = json.dumps({"query": "{ plans { code } }"})
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        for attempt in range(3):
            # One connection throughout: a dropped one fails the next request here.
            connection.request("POST", "/graphql", body, headers)
            response = connection.getresponse()
            answer = json.loads(response.read())
            assert response.status == 503, (attempt, answer)
            assert response.getheader("connection") != "close"
            assert answer["errors"][0]["extensions"]["code"] == "DATABASE_UNAVAILABLE"
        connection.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()

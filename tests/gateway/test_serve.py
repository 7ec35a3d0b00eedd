"""End to end: the gateway as operators run it (`entitlements serve`, a real uvicorn process)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.schema.conftest import JWT_SECRET, user_token

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "entitlements"), *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "JWT_SECRET": JWT_SECRET,
        "LOG_FORMAT": "json",
    }
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "entitlements"), "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((tmp_path / "serve.log").read_text())
            time.sleep(0.2)
        yield base, env
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def test_support_and_viewer_through_a_real_server(served) -> None:
    base, env = served
    created = cli(env, "keys", "create", "--role", "support", "--name", "e2e-support")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert cli(env, "user", "create", "e2e@example.com").returncode == 0

    headers = {"Authorization": f"Bearer {key}", "X-Request-ID": "e2e-1"}
    response = httpx.post(
        f"{base}/graphql",
        json={
            "query": "mutation ($i: GrantCreditsInput!) { grantCredits(input: $i) "
            "{ ... on CreditChange { event { balanceAfter requestId } } } }",
            "variables": {"i": {"email": "e2e@example.com", "amount": 25, "reason": "e2e"}},
        },
        headers=headers,
    )
    assert response.headers["x-request-id"] == "e2e-1"
    assert response.json()["data"]["grantCredits"]["event"]["requestId"] == "e2e-1"

    shown = cli(env, "user", "show", "e2e@example.com", "--json")
    user_id = json.loads(shown.stdout)["user_id"]
    viewer = httpx.post(
        f"{base}/graphql",
        json={"query": "{ viewer { email credits { available } } }"},
        headers={"Authorization": f"Bearer {user_token(user_id)}"},
    )
    # 25 granted by support plus the free tier's 50 for this month.
    assert viewer.json() == {
        "data": {"viewer": {"email": "e2e@example.com", "credits": {"available": 75}}}
    }


def test_serve_migrates_a_new_sqlite_database_first(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/fresh/new.db"}
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "entitlements"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code
                if status == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert status == 200
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_bad_setting_stops_start_up_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": "mysql://nope", "LOG_FORMAT": "json"}
    result = cli(env, "serve", "--port", str(free_port()))
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "DATABASE_URL" in result.stderr


def test_a_forwarded_client_address_is_what_the_throttle_counts(served) -> None:
    """From a trusted proxy (uvicorn trusts loopback by default), X-Forwarded-For names the
    client whose budget of new documents a POST /graphql spends."""
    base, _ = served

    def new_document(n: int, client: str) -> int:
        response = httpx.post(
            f"{base}/graphql",
            json={"query": f"{{ d{n}: plans {{ code }} }}"},
            headers={"X-Forwarded-For": client},
        )
        return response.status_code

    def burst(client: str, first: int, count: int) -> list[int]:
        # Concurrent, so that the bucket (5 a second) cannot refill between them.
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda n: new_document(n, client), range(first, first + count)))

    # Bursts until the first client's budget is spent (a loaded machine refills it meanwhile).
    first: list[int] = []
    while 429 not in first and len(first) < 200:
        first += burst("198.51.100.1", len(first), 10)
    assert 429 in first and set(first) == {200, 429}
    # Another client behind the same proxy has its own budget: four at once would not pass on
    # the first one's, which refills one a fifth of a second.
    assert burst("198.51.100.2", 1000, 4) == [200] * 4

"""End-user tokens verified against a JWKS served on loopback: cached, refreshed on a new kid."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway import jwks
from gateway.settings import Settings
from tests.factories import make_user
from tests.schema.conftest import JWT_SECRET, error_codes

VIEWER = "{ viewer { id email } }"


class JwksServer:
    """A JWKS endpoint whose key set the test rotates; counts how often it is fetched."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"

    def publish(self, kid: str, key: rsa.RSAPrivateKey) -> None:
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        self.keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def settings(database_url: str, jwks_server: JwksServer) -> Settings:
    return Settings(database_url=database_url, jwt_jwks_url=jwks_server.url)


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def signed(key: Any, kid: str | None, sub: str | int, algorithm: str = "RS256") -> str:
    headers = {"kid": kid} if kid is not None else None
    payload = {"sub": str(sub), "exp": int(time.time()) + 600}
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def hs256_with_public_key(jwk: dict[str, Any], kid: str, sub: int) -> str:
    """Built by hand: PyJWT itself refuses to use a public key as an HMAC secret."""
    pem = RSAAlgorithm.from_jwk(jwk).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def part(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    claims = part(json.dumps({"sub": str(sub), "exp": int(time.time()) + 600}).encode())
    signature = hmac.new(pem, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{part(signature)}"


async def viewer(gql, token: str) -> dict:
    response = await gql.post(VIEWER, token=token)
    assert response.status_code == 200, response.text
    return response.json()


async def test_tokens_verify_against_the_jwks_and_the_set_is_cached(
    runtime, gql, jwks_server
) -> None:
    first = rsa_key()
    jwks_server.publish("key-1", first)
    alice, bob = await make_user(runtime), await make_user(runtime)

    for user in (alice, bob):
        body = await viewer(gql, signed(first, "key-1", user.id))
        assert body["data"]["viewer"]["email"] == user.email
    assert jwks_server.fetches == 1

    forged = signed(rsa_key(), "key-1", alice.id)
    assert error_codes(await viewer(gql, forged)) == ["UNAUTHENTICATED"]
    assert jwks_server.fetches == 1


async def test_a_rotated_in_key_is_accepted_after_a_refresh(runtime, gql, jwks_server) -> None:
    old, new = rsa_key(), rsa_key()
    jwks_server.publish("2026-old", old)
    user = await make_user(runtime)
    assert (await viewer(gql, signed(old, "2026-old", user.id)))["data"]["viewer"]

    jwks_server.publish("2026-new", new)
    # PyJWKClient refetches for an unknown kid only once its cooldown has passed.
    await asyncio.sleep(jwks.REFRESH_COOLDOWN_SECONDS + 0.2)
    body = await viewer(gql, signed(new, "2026-new", user.id))
    assert body["data"]["viewer"]["email"] == user.email
    assert jwks_server.fetches == 2


async def test_tokens_the_jwks_cannot_vouch_for_are_unauthenticated(
    runtime, gql, jwks_server
) -> None:
    jwks_server.publish("key-1", rsa_key())
    user = await make_user(runtime)
    refused = [
        signed(rsa_key(), "no-such-kid", user.id),
        signed(rsa_key(), None, user.id),
        # The classic confusion: HS256 keyed with the published public key.
        hs256_with_public_key(jwks_server.keys[0], "key-1", user.id),
        signed(JWT_SECRET, "key-1", user.id, algorithm="HS256"),
    ]
    for token in refused:
        body = await viewer(gql, token)
        assert error_codes(body) == ["UNAUTHENTICATED"], body
        assert body.get("data") in (None, {"viewer": None})


async def test_an_unreachable_jwks_is_unauthenticated_not_a_crash(
    runtime, gql, jwks_server
) -> None:
    jwks_server.httpd.shutdown()
    jwks_server.httpd.server_close()
    user = await make_user(runtime)
    body = await viewer(gql, signed(rsa_key(), "key-1", user.id))
    assert error_codes(body) == ["UNAUTHENTICATED"]
    assert "cannot be fetched" in body["errors"][0]["message"]

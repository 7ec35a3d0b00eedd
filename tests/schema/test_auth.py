"""Authentication and roles, field by field, for every role; viewers see only themselves."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.app import create_app
from gateway.settings import Settings
from resolvers import keys
from tests.factories import make_user
from tests.schema.conftest import JWT_SECRET, data_of, error_codes, user_token

ROLES = ("anonymous", "viewer", "service", "support", "dashboard", "admin")

# Each operation, and the roles that may run it directly (dashboard keys run saved queries only).
OPERATIONS = {
    "viewer": ("{ viewer { email } }", {"viewer", "service", "support", "admin"}),
    "user": ("query ($e: String) { user(email: $e) { email } }", {"service", "support", "admin"}),
    "users": ("{ users(first: 1) { edges { node { email } } } }", {"service", "support", "admin"}),
    "plans": ("{ plans { code } }", {"anonymous", "viewer", "service", "support", "admin"}),
    "entitlementChanges": (
        '{ entitlementChanges(requestId: "x") { __typename } }',
        {"support", "admin"},
    ),
    "grantCredits": (
        'mutation ($e: String) { grantCredits(input: {email: $e, amount: 1, reason: "t"})'
        " { __typename } }",
        {"support", "admin"},
    ),
    "consumeCredits": (
        'mutation ($e: String) { consumeCredits(input: {email: $e, amount: 1, reason: "t"})'
        " { __typename } }",
        {"service", "support", "admin"},
    ),
    "setTier": (
        'mutation ($e: String) { setTier(input: {email: $e, tier: "pro", reason: "t"})'
        " { __typename } }",
        {"support", "admin"},
    ),
    "upsertUser": (
        'mutation { upsertUser(input: {email: "new-person@example.com"}) { __typename } }',
        {"service", "support", "admin"},
    ),
}


@pytest.fixture
async def tokens(runtime, make_key):
    user = await make_user(runtime, credits_granted=10)
    made = {"anonymous": None, "viewer": user_token(user.id)}
    for role in keys.ROLES:
        made[role] = await make_key(role)
    return user, made


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
async def test_each_field_refuses_the_roles_it_is_not_for(gql, tokens, operation) -> None:
    user, made = tokens
    document, allowed = OPERATIONS[operation]
    for role in ROLES:
        body = await gql(document, {"e": user.email}, token=made[role])
        if role in allowed:
            assert "errors" not in body, (role, body)
            assert body["data"][operation] is not None or operation == "viewer", (role, body)
        else:
            expected = "UNAUTHENTICATED" if role == "anonymous" else "FORBIDDEN"
            assert error_codes(body) == [expected], (role, body)
            assert body["errors"][0]["extensions"]["requestId"]


async def test_viewer_sees_only_their_own_account(runtime, gql) -> None:
    alice = await make_user(runtime, email="alice@example.com", credits_granted=7)
    await make_user(runtime, email="bob@example.com", credits_granted=9)
    token = user_token(alice.id)
    me = data_of(await gql("{ viewer { email credits { available } } }", token=token))
    assert me["viewer"] == {"email": "alice@example.com", "credits": {"available": 7}}
    other = await gql('{ user(email: "bob@example.com") { email } }', token=token)
    assert error_codes(other) == ["FORBIDDEN"] and other["data"] == {"user": None}
    listing = await gql("{ users { edges { node { email } } } }", token=token)
    assert error_codes(listing) == ["FORBIDDEN"]
    spend = await gql(
        'mutation { consumeCredits(input: {email: "bob@example.com", amount: 1}) { __typename } }',
        token=token,
    )
    assert error_codes(spend) == ["FORBIDDEN"]


async def test_viewer_and_anonymous_cannot_introspect_but_staff_can(runtime, gql, tokens) -> None:
    _, made = tokens
    introspect = "{ __schema { queryType { name } } }"
    for role in ("anonymous", "viewer"):
        body = await gql(introspect, token=made[role])
        assert error_codes(body) == ["FORBIDDEN"], role
        body = await gql('{ __type(name: "User") { name } }', token=made[role])
        assert error_codes(body) == ["FORBIDDEN"], role
    assert data_of(await gql(introspect, token=made["support"]))["__schema"]["queryType"] == {
        "name": "Query"
    }
    assert data_of(await gql("{ __typename }", token=made["viewer"])) == {"__typename": "Query"}


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer ent_sup_not-a-real-key",
        "Bearer not.a.jwt",
        "Bearer "
        + jwt.encode(
            {"sub": "1", "exp": int(time.time()) + 60},
            "a-different-secret-of-enough-length-0123456789",
        ),
        "Bearer " + jwt.encode({"sub": "1", "exp": int(time.time()) - 60}, JWT_SECRET),
        "Bearer " + jwt.encode({"sub": "1"}, JWT_SECRET),
        "Token abc",
        "Basic !!!",
    ],
)
async def test_invalid_credentials_are_unauthenticated(gql, authorization) -> None:
    response = await gql.http.post(
        "/graphql", json={"query": "{ plans { code } }"}, headers={"Authorization": authorization}
    )
    body = response.json()
    assert error_codes(body) == ["UNAUTHENTICATED"], authorization
    assert body["errors"][0]["extensions"]["requestId"] == response.headers["x-request-id"]


async def test_revoked_key_is_refused(runtime, gql, make_key) -> None:
    secret = await make_key("support", "leaver")
    await runtime.db.write(lambda s: keys.revoke_api_key(s, name="leaver", now=runtime.clock()))
    assert error_codes(await gql("{ plans { code } }", token=secret)) == ["UNAUTHENTICATED"]


async def test_first_token_with_a_new_email_provisions_the_user(runtime, gql, make_key) -> None:
    token = user_token("ext-123", email="Newcomer@Example.com")
    me = data_of(await gql("{ viewer { email tier credits { available } } }", token=token))
    # The free tier's monthly allowance is granted on the first read of the month.
    assert me["viewer"] == {
        "email": "newcomer@example.com",
        "tier": "free",
        "credits": {"available": 50},
    }
    again = data_of(await gql("{ viewer { id } }", token=user_token("newcomer@example.com")))
    support = await make_key("support")
    users = data_of(await gql("{ users { edges { node { id } } } }", token=support))["users"]
    assert [e["node"]["id"] for e in users["edges"]] == [again["viewer"]["id"]]


async def test_tokens_are_refused_when_no_jwt_key_is_configured(runtime, gql) -> None:
    runtime.settings = type(runtime.settings)(database_url=runtime.settings.database_url)
    app = create_app(runtime)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.post(
            "/graphql",
            json={"query": "{ viewer { id } }"},
            headers={"Authorization": f"Bearer {user_token(1)}"},
        )
    assert error_codes(response.json()) == ["UNAUTHENTICATED"]


async def test_rs256_tokens_with_audience_and_issuer(runtime) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    runtime.settings = Settings.from_env(
        {
            "DATABASE_URL": runtime.settings.database_url,
            "JWT_PUBLIC_KEY": public_pem.decode(),
            "JWT_AUDIENCE": "entitlements",
            "JWT_ISSUER": "https://auth.example.com",
        }
    )
    user = await make_user(runtime, credits_granted=4)
    claims = {"sub": str(user.id), "exp": int(time.time()) + 60, "iss": "https://auth.example.com"}
    good = jwt.encode({**claims, "aud": "entitlements"}, private, algorithm="RS256")
    wrong_audience = jwt.encode({**claims, "aud": "someone-else"}, private, algorithm="RS256")
    hs256 = jwt.encode({**claims, "aud": "entitlements"}, "x" * 40, algorithm="HS256")
    app = create_app(runtime)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:

        async def viewer(token: str) -> dict:
            response = await http.post(
                "/graphql",
                json={"query": "{ viewer { credits { available } } }"},
                headers={"Authorization": f"Bearer {token}"},
            )
            return response.json()

        assert data_of(await viewer(good)) == {"viewer": {"credits": {"available": 4}}}
        assert error_codes(await viewer(wrong_audience)) == ["UNAUTHENTICATED"]
        assert error_codes(await viewer(hs256)) == ["UNAUTHENTICATED"]

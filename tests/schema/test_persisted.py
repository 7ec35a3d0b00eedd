"""Persisted documents over HTTP: Apollo's automatic persisted queries and registered documents."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import httpx

from gateway.graphql.documents import PUBLIC_MAX_TOKENS
from gateway.graphql.throttle import PER_ADDRESS_BURST
from schema.persisted import load_registered_documents
from tests.factories import make_user
from tests.schema.conftest import data_of, error_codes, user_token

VIEWER_READ = "query Badge { viewer { tier credits { available } } }"


def sha256(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()


def persisted(digest: str, version: Any = 1) -> dict[str, Any]:
    return {"persistedQuery": {"version": version, "sha256Hash": digest}}


async def post(
    gql, body: dict[str, Any], *, token: str | None = None, accept: str | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if accept:
        headers["Accept"] = accept
    return await gql.http.post("/graphql", json=body, headers=headers)


async def test_an_unknown_hash_is_not_found_then_registered_by_the_resend(gql, runtime) -> None:
    user = await make_user(runtime, credits_granted=7)
    token = user_token(user.id)
    query = f"# {uuid.uuid4().hex}\n{VIEWER_READ}"
    digest = sha256(query)

    missing = await post(gql, {"extensions": persisted(digest)}, token=token)
    assert missing.status_code == 200
    error = missing.json()["errors"][0]
    assert error["message"] == "PersistedQueryNotFound"
    assert error["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
    assert error["extensions"]["requestId"] == missing.headers["x-request-id"]

    registered = await post(gql, {"query": query, "extensions": persisted(digest)}, token=token)
    expected = {"viewer": {"tier": user.tier, "credits": {"available": 7}}}
    assert data_of(registered.json()) == expected

    by_hash = await post(gql, {"extensions": persisted(digest)}, token=token)
    assert data_of(by_hash.json()) == expected
    by_get = await gql.http.get(
        "/graphql",
        params={"extensions": json.dumps(persisted(digest))},
        headers={"Authorization": f"Bearer {token}", "Accept": "text/html, application/json"},
    )
    assert by_get.status_code == 200
    assert data_of(by_get.json()) == expected


async def test_a_hash_that_is_not_the_documents_registers_nothing(gql, runtime) -> None:
    user = await make_user(runtime)
    token = user_token(user.id)
    query = f"# {uuid.uuid4().hex}\n{VIEWER_READ}"
    other = sha256(query + " ")
    wrong = await post(gql, {"query": query, "extensions": persisted(other)}, token=token)
    assert wrong.status_code == 400
    assert error_codes(wrong.json()) == ["BAD_REQUEST"]
    assert wrong.json()["errors"][0]["message"] == "provided sha does not match query"
    still_missing = await post(gql, {"extensions": persisted(other)}, token=token)
    assert error_codes(still_missing.json()) == ["PERSISTED_QUERY_NOT_FOUND"]


async def test_malformed_persisted_query_extensions_are_bad_requests(gql) -> None:
    for extensions in (
        {"persistedQuery": "abc"},
        persisted(sha256(VIEWER_READ), version=2),
        persisted("ABC"),
        persisted(sha256(VIEWER_READ).upper()),
        {"persistedQuery": {"version": 1}},
    ):
        response = await post(gql, {"extensions": extensions})
        assert response.status_code == 400, extensions
        assert error_codes(response.json()) == ["BAD_REQUEST"]


async def test_an_invalid_document_is_not_registered(gql) -> None:
    query = f"# {uuid.uuid4().hex}\n{{ viewer {{ nosuchfield }} }}"
    digest = sha256(query)
    refused = await post(gql, {"query": query, "extensions": persisted(digest)})
    assert error_codes(refused.json()) == ["GRAPHQL_VALIDATION_FAILED"]
    again = await post(gql, {"extensions": persisted(digest)})
    assert error_codes(again.json()) == ["PERSISTED_QUERY_NOT_FOUND"]


async def test_anonymous_registrations_keep_the_new_document_budgets(gql) -> None:
    # Over the token budget of a caller without a key: refused, and not registered.
    long_query = "{ " + " ".join(["__typename"] * PUBLIC_MAX_TOKENS) + " }"
    digest = sha256(long_query)
    over = await post(gql, {"query": long_query, "extensions": persisted(digest)})
    assert error_codes(over.json()) == ["GRAPHQL_PARSE_FAILED"]
    again = await post(gql, {"extensions": persisted(digest)})
    assert error_codes(again.json()) == ["PERSISTED_QUERY_NOT_FOUND"]
    # And registering new documents draws on the same throttle as sending them.
    statuses = []
    for _ in range(int(PER_ADDRESS_BURST) * 3):
        query = f"# {uuid.uuid4().hex}\n{{ plans {{ name }} }}"
        response = await post(gql, {"query": query, "extensions": persisted(sha256(query))})
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert error_codes(response.json()) == ["RATE_LIMITED"]
            missing = await post(gql, {"extensions": persisted(sha256(query))})
            assert error_codes(missing.json()) == ["PERSISTED_QUERY_NOT_FOUND"]
            break
    assert statuses[-1] == 429, statuses


async def test_registered_documents_run_by_hash_from_the_start(gql, runtime, make_key) -> None:
    user = await make_user(runtime, credits_granted=3)
    token = user_token(user.id)
    documents = load_registered_documents()
    query = documents["viewer_entitlements"]
    response = await post(gql, {"extensions": persisted(sha256(query))}, token=token)
    data = data_of(response.json())
    assert data["viewer"]["id"] == str(user.id)
    assert data["viewer"]["credits"]["available"] == 3
    # Dashboard keys still run saved queries only.
    dashboard = await make_key("dashboard")
    refused = await post(gql, {"extensions": persisted(sha256(query))}, token=dashboard)
    assert error_codes(refused.json()) == ["FORBIDDEN"]

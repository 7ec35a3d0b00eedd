"""GraphQL over HTTP: request ids, GET and POST, malformed requests, limits, masking, GraphiQL."""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import text

from schema import schema
from tests.factories import make_user
from tests.resolvers.billing_rows import add_signature_failures
from tests.schema.conftest import data_of, error_codes, user_token

ROOT = Path(__file__).resolve().parents[2]


async def test_request_id_is_kept_when_sane_and_made_otherwise(gql) -> None:
    kept = await gql.http.post(
        "/graphql", json={"query": "{ plans { code } }"}, headers={"X-Request-ID": "abc-123.x"}
    )
    assert kept.headers["x-request-id"] == "abc-123.x"
    for bad in ("has spaces", "x" * 200, "semi;colon", ""):
        made = await gql.http.post(
            "/graphql", json={"query": "{ plans { code } }"}, headers={"X-Request-ID": bad}
        )
        assert made.headers["x-request-id"] != bad
        assert len(made.headers["x-request-id"]) == 32
    health = await gql.http.get("/healthz")
    assert health.json() == {"status": "ok"} and health.headers["x-request-id"]


async def test_queries_work_over_get_and_mutations_do_not(gql, make_key) -> None:
    support = await make_key("support")
    response = await gql.http.get(
        "/graphql",
        params={"query": "query ($l: String) { plans(locale: $l) { name } }",
                "variables": json.dumps({"l": "nl"})},
        headers={"Authorization": f"Bearer {support}"},
    )  # fmt: skip
    assert response.status_code == 200
    assert data_of(response.json())["plans"][0] == {"name": "Gratis"}
    mutation = await gql.http.get(
        "/graphql",
        params={"query": 'mutation { upsertUser(input: {email: "a@b.co"}) { __typename } }'},
        headers={"Authorization": f"Bearer {support}"},
    )
    assert mutation.status_code == 405


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'{"query": 5}', "application/json", 400),
        (b'{"query": "{ plans { code } }", "variables": "{bad"}', "application/json", 400),
        (b"query { plans { code } }", "text/plain", 415),
        (b"{}", "application/json", 400),
    ],
)
async def test_malformed_requests_get_a_clear_4xx(gql, body, content_type, status) -> None:
    response = await gql.http.post("/graphql", content=body, headers={"Content-Type": content_type})
    assert response.status_code == status, response.text
    error = response.json()["errors"][0]
    assert error["message"] and error["extensions"]["requestId"]


async def test_oversized_body_is_refused(gql) -> None:
    response = await gql.http.post(
        "/graphql",
        content=b"{" + b" " * 1_100_000 + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413


async def test_depth_alias_and_token_limits_hold_for_every_role(gql, make_key) -> None:
    admin = await make_key("admin")
    deep = (
        "{ users { edges { node { creditEvents { edges { node { user {"
        " creditEvents { edges { node { user { email } } } } } } } } } } } }"
    )
    aliases = "{ " + " ".join(f"a{i}: plans {{ code }}" for i in range(40)) + " }"
    tokens = "{ plans { " + "code " * 3000 + "} }"
    for query in (deep, aliases, tokens):
        body = await gql(query, token=admin)
        assert body.get("data") is None and body["errors"], query[:40]
        assert body["errors"][0]["extensions"]["code"] in (
            "GRAPHQL_VALIDATION_FAILED",
            "GRAPHQL_PARSE_FAILED",
        )


async def test_page_size_and_cursor_are_checked(gql, make_key) -> None:
    support = await make_key("support")
    too_big = await gql("{ users(first: 101) { edges { cursor } } }", token=support)
    assert error_codes(too_big) == ["BAD_USER_INPUT"]
    bad_cursor = await gql('{ users(after: "nope") { edges { cursor } } }', token=support)
    assert error_codes(bad_cursor) == ["BAD_USER_INPUT"]


async def test_users_pages_filters_and_searches(runtime, gql, make_key) -> None:
    support = await make_key("support")
    for name in ("ann", "anna", "bob", "an_x"):
        await make_user(runtime, email=f"{name}@example.com")
    await make_user(runtime, email="zed@example.com", tier="pro")
    query = """
    query ($a: String, $s: String, $t: String) {
      users(first: 2, after: $a, search: $s, tier: $t) {
        edges { node { email } } pageInfo { hasNextPage endCursor }
      }
    }"""
    page = data_of(await gql(query, {"s": "an"}, token=support))["users"]
    assert [e["node"]["email"] for e in page["edges"]] == ["ann@example.com", "anna@example.com"]
    assert page["pageInfo"]["hasNextPage"] is True
    rest = data_of(await gql(query, {"s": "an", "a": page["pageInfo"]["endCursor"]}, token=support))
    assert [e["node"]["email"] for e in rest["users"]["edges"]] == ["an_x@example.com"]
    assert rest["users"]["pageInfo"]["hasNextPage"] is False
    literal = data_of(await gql(query, {"s": "an_"}, token=support))["users"]["edges"]
    assert [e["node"]["email"] for e in literal] == ["an_x@example.com"]
    pro = data_of(await gql(query, {"t": "pro"}, token=support))["users"]["edges"]
    assert [e["node"]["email"] for e in pro] == ["zed@example.com"]


async def test_unexpected_failures_are_masked_and_logged(runtime, gql, make_key, caplog) -> None:
    support = await make_key("support")
    user = await make_user(runtime, credits_granted=3)
    caplog.set_level(logging.ERROR, logger="gateway.graphql")
    # A real infrastructure fault: the table the resolver reads is gone.
    async with runtime.db.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE credit_grants RENAME TO credit_grants_gone"))
    try:
        response = await gql.post(
            "query ($e: String) { user(email: $e) { email credits { grants { amount } } } }",
            {"e": user.email},
            token=support,
            headers={"X-Request-ID": "trace-me"},
        )
    finally:
        async with runtime.db.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE credit_grants_gone RENAME TO credit_grants"))
    body = response.json()
    # grants is non-null, so the null bubbles up to the nullable user field.
    assert body["data"] == {"user": None}
    (error,) = body["errors"]
    assert error["message"] == "Unexpected error."
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": "trace-me"}
    assert "credit_grants" not in response.text and "SELECT" not in response.text
    logged = [r for r in caplog.records if r.name == "gateway.graphql"]
    assert logged and logged[0].exc_info and "credit_grants" in str(logged[0].exc_info[1])


async def test_graphiql_is_for_staff_keys_only(gql, runtime, make_key) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml"}
    anonymous = await gql.http.get("/graphql", headers=browser)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Basic")
    user = await make_user(runtime)
    viewer = await gql.http.get(
        "/graphql", headers={**browser, "Authorization": f"Bearer {user_token(user.id)}"}
    )
    assert viewer.status_code == 403
    support = await make_key("support")
    basic = base64.b64encode(f"jane:{support}".encode()).decode()
    page = await gql.http.get("/graphql", headers={**browser, "Authorization": f"Basic {basic}"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    # GraphiQL's own requests carry the same Basic credentials.
    response = await gql.http.post(
        "/graphql", json={"query": "{ __schema { queryType { name } } }"},
        headers={"Authorization": f"Basic {basic}"},
    )  # fmt: skip
    assert data_of(response.json())["__schema"]["queryType"]["name"] == "Query"


async def test_each_request_is_logged_once_with_its_actor(gql, make_key, caplog) -> None:
    support = await make_key("support", "jane")
    caplog.set_level(logging.INFO, logger="gateway.access")
    await gql.post("{ plans { code } }", token=support, headers={"X-Request-ID": "r-1"})
    lines = [r.fields for r in caplog.records if r.name == "gateway.access"]
    assert lines[-1]["request_id"] == "r-1"
    assert lines[-1]["actor"] == "key:jane"
    assert (lines[-1]["method"], lines[-1]["path"], lines[-1]["status"]) == (
        "POST",
        "/graphql",
        200,
    )
    assert lines[-1]["duration_ms"] >= 0


def test_checked_in_schema_is_current() -> None:
    checked_in = (ROOT / "schema.graphql").read_text()
    assert checked_in.strip() == schema.as_str().strip(), (
        "schema.graphql is stale: run `entitlements schema export > schema.graphql`"
    )


async def test_metrics_endpoint_counts_requests_changes_and_signature_failures(
    runtime, gql, make_key
) -> None:
    support = await make_key("support")
    user = await make_user(runtime)
    await gql(
        'mutation ($e: String) { grantCredits(input: {email: $e, amount: 5, reason: "m"}) '
        "{ __typename } }",
        {"e": user.email},
        token=support,
    )
    await add_signature_failures(runtime, 2, received_at=runtime.clock())
    text = (await gql.http.get("/metrics")).text
    assert 'entitlements_http_requests_total{path="/graphql",status="2xx"}' in text
    assert 'entitlements_changes_total{action="credits_granted"}' in text
    assert "entitlements_webhook_signature_failures_24h 2.0" in text
    assert 'entitlements_webhook_events{status="failed"} 0.0' in text


async def test_metrics_token_when_set_is_required_as_a_bearer_token(runtime, gql) -> None:
    token = "prom-scrape-0123456789abcdef"
    assert (await gql.http.get("/metrics")).status_code == 200  # unset: open
    runtime.settings = replace(runtime.settings, metrics_token=token)
    for authorization in (None, f"Bearer {token}x", f"Basic {token}", "Bearer ", token):
        headers = {"Authorization": authorization} if authorization else {}
        refused = await gql.http.get("/metrics", headers=headers)
        assert refused.status_code == 401, authorization
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "entitlements_" not in refused.text
    allowed = await gql.http.get("/metrics", headers={"Authorization": f"bearer {token}"})
    assert allowed.status_code == 200
    assert "entitlements_webhook_signature_failures_24h" in allowed.text


async def test_hostile_documents_are_refused_cheaply(gql, make_key) -> None:
    huge = '{ plans(locale: "' + "x" * 30_000 + '") { code } }'
    response = await gql.http.post("/graphql", json={"query": huge})
    assert response.status_code == 400 and "variables" in response.json()["errors"][0]["message"]
    nested = b'{"query": "{ plans { code } }", "variables": ' + b"[" * 100_000 + b"}"
    response = await gql.http.post(
        "/graphql", content=nested, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["errors"][0]["extensions"]["requestId"]


async def test_validation_errors_suggest_field_names_to_staff_only(gql, make_key) -> None:
    anonymous = await gql("{ viewr { email } }")
    assert "Did you mean" not in anonymous["errors"][0]["message"]
    assert anonymous["errors"][0]["message"] == "Cannot query field 'viewr' on type 'Query'."
    staff = await gql("{ viewr { email } }", token=await make_key("support"))
    assert "Did you mean 'viewer'" in staff["errors"][0]["message"]

"""GraphQL over HTTP content negotiation: application/graphql-response+json with real status
codes when the client accepts it, application/json (always 200) otherwise, 406 for neither."""

from __future__ import annotations

import pytest

from gateway.media_types import negotiate

STRICT = "application/graphql-response+json"
LEGACY = "application/json"


async def ask(gql, accept: str | None, query: str, variables=None, token: str | None = None):
    headers = {} if accept is None else {"Accept": accept}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return await gql.http.post(
        "/graphql", json={"query": query, "variables": variables}, headers=headers
    )


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        pytest.param(None, LEGACY, id="missing"),
        pytest.param("", LEGACY, id="blank"),
        pytest.param(STRICT, STRICT, id="strict"),
        pytest.param(LEGACY, LEGACY, id="legacy"),
        pytest.param("*/*", LEGACY, id="wildcard"),
        pytest.param("application/*", LEGACY, id="application-wildcard"),
        pytest.param(f"{LEGACY}, {STRICT}", STRICT, id="tie-goes-to-strict"),
        pytest.param(f"{STRICT};q=0.5, {LEGACY}", LEGACY, id="quality-decides"),
        pytest.param(f"{LEGACY}, multipart/mixed", LEGACY, id="graphiql-fetcher"),
        pytest.param(f"{STRICT};q=0, text/html", None, id="q-zero-is-refused"),
        pytest.param("text/xml", None, id="unacceptable"),
        pytest.param(f"{STRICT};q=nan", None, id="malformed-quality"),
    ],
)
def test_negotiate(accept: str | None, expected: str | None) -> None:
    assert negotiate(accept) == expected


async def test_a_result_is_200_in_the_type_the_client_accepts(gql) -> None:
    for accept, content_type in ((STRICT, STRICT), (LEGACY, LEGACY), (None, LEGACY)):
        response = await ask(gql, accept, "{ __typename }")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(content_type)
        assert response.json() == {"data": {"__typename": "Query"}}


@pytest.mark.parametrize(
    ("query", "variables", "code"),
    [
        pytest.param("{ __typename", None, "GRAPHQL_PARSE_FAILED", id="parse"),
        pytest.param("{ noSuchField }", None, "GRAPHQL_VALIDATION_FAILED", id="validation"),
        # Coercion errors' code is the route's business; their status is this test's.
        pytest.param(
            "query ($l: String!) { plans(locale: $l) { code } }", {"l": 7}, None, id="variables"
        ),
    ],
)
async def test_a_request_that_never_executes_is_400_only_under_the_new_type(
    gql, query: str, variables, code: str | None
) -> None:
    strict = await ask(gql, STRICT, query, variables)
    assert strict.status_code == 400
    assert strict.headers["content-type"].startswith(STRICT)
    assert strict.json().get("data") is None
    legacy = await ask(gql, LEGACY, query, variables)
    assert legacy.status_code == 200
    for response in (strict, legacy):
        assert response.json()["errors"], response.text
        if code is not None:
            assert response.json()["errors"][0]["extensions"]["code"] == code


async def test_refused_callers_get_401_and_403_under_the_new_type(gql) -> None:
    unauthenticated = await ask(gql, STRICT, "{ __typename }", token="not-a-token")
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    forbidden = await ask(gql, STRICT, "{ __schema { queryType { name } } }")
    assert forbidden.status_code == 403
    assert forbidden.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert (await ask(gql, LEGACY, "{ __typename }", token="not-a-token")).status_code == 200


async def test_a_field_error_during_execution_stays_200(gql) -> None:
    response = await ask(gql, STRICT, '{ pricing(currency: "GBP") { currency } }')
    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None and body["errors"][0]["path"] == ["pricing"]


async def test_an_unacceptable_accept_is_406_and_changes_nothing(gql, make_key) -> None:
    key = await make_key("support")
    mutation = (
        'mutation { grantCredits(input: {email: "nobody@example.com", amount: 5, reason: "x"}) '
        "{ __typename } }"
    )
    response = await ask(gql, "text/xml", mutation, token=key)
    assert response.status_code == 406
    assert response.json()["errors"][0]["extensions"]["code"] == "NOT_ACCEPTABLE"
    assert response.headers["x-request-id"]
    # A browser asking for a page still gets GraphiQL's challenge, not a 406.
    page = await gql.http.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 401

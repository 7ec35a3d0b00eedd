"""New documents over HTTP: token budgets per role, the throttle, clear aborts, no schema hints."""

from __future__ import annotations

import gc
import tracemalloc
import uuid

import pytest

from gateway.graphql.documents import PUBLIC_MAX_TOKENS, STAFF_MAX_TOKENS, DocumentCache
from gateway.graphql.throttle import PER_ADDRESS_BURST, DocumentThrottle
from schema import schema
from tests.schema.conftest import data_of, error_codes, user_token


def repeated_fields(tokens: int) -> str:
    """`{ plans { code code … } }` of about `tokens` tokens, unique so that it is never cached."""
    return f"# {uuid.uuid4().hex}\n{{ plans {{ " + "code " * (tokens - 5) + "} }"


async def test_callers_without_a_key_get_a_smaller_budget_for_new_documents(gql, make_key) -> None:
    query = repeated_fields(PUBLIC_MAX_TOKENS + 50)
    for token in (None, user_token(1)):
        body = await gql(query, token=token)
        assert body.get("data") is None and error_codes(body) == ["GRAPHQL_PARSE_FAILED"]
        assert f"more than {PUBLIC_MAX_TOKENS} tokens" in body["errors"][0]["message"]
    support = await make_key("support")
    assert data_of(await gql(query, token=support))["plans"]
    # Once a staff key has had it prepared, the document is known and costs nothing to run.
    assert data_of(await gql(query))["plans"]


async def test_staff_budget_still_holds(gql, make_key) -> None:
    body = await gql(repeated_fields(STAFF_MAX_TOKENS + 10), token=await make_key("admin"))
    assert error_codes(body) == ["GRAPHQL_PARSE_FAILED"]
    assert f"more than {STAFF_MAX_TOKENS} tokens" in body["errors"][0]["message"]


async def test_validation_aborts_are_validation_failures_with_a_clear_message(
    gql, make_key
) -> None:
    body = await gql(repeated_fields(STAFF_MAX_TOKENS - 10), token=await make_key("support"))
    assert body.get("data") is None
    assert error_codes(body) == ["GRAPHQL_VALIDATION_FAILED"]
    message = body["errors"][0]["message"]
    assert "too costly to validate" in message and message != "Validation aborted."
    assert body["errors"][0]["extensions"]["requestId"]


async def test_new_documents_past_the_address_budget_are_answered_429(gql, make_key) -> None:
    known = "{ plans { code } }"
    assert data_of(await gql(known))
    statuses = []
    refused = None
    # The bucket refills while the requests run, so send until it is empty rather than count.
    for _ in range(int(PER_ADDRESS_BURST) * 3):
        response = await gql.post(f"# {uuid.uuid4().hex}\n{{ plans {{ name }} }}")
        statuses.append(response.status_code)
        if response.status_code == 429:
            refused = response
            break
    assert refused is not None, statuses
    assert statuses.count(200) >= PER_ADDRESS_BURST - 1
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["x-request-id"]
    error = refused.json()["errors"][0]
    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert error["extensions"]["requestId"] == refused.headers["x-request-id"]
    # Known documents are never throttled, nor are staff keys.
    assert data_of(await gql(known))
    viewer = await gql.post(f"# {uuid.uuid4().hex}\n{{ plans {{ name }} }}", token=user_token(1))
    assert viewer.status_code == 429
    support = await make_key("support")
    assert data_of(await gql(f"# {uuid.uuid4().hex}\n{{ plans {{ name }} }}", token=support))


async def test_variable_errors_hint_at_the_schema_for_staff_only(gql, make_key) -> None:
    grant = "mutation ($input: GrantCreditsInput!) { grantCredits(input: $input) { __typename } }"
    bad_field = {"input": {"emial": "a@b.co", "amount": 1, "reason": "r"}}
    webhooks = (
        "query ($s: WebhookEventStatus) { webhookEvents(status: $s) { pageInfo { hasNextPage } } }"
    )
    bad_enum = {"s": "PROCESED"}
    literal_enum = "{ webhookEvents(status: PROCESED) { pageInfo { hasNextPage } } }"
    for token in (None, user_token(1)):
        for query, variables in ((grant, bad_field), (webhooks, bad_enum), (literal_enum, None)):
            body = await gql(query, variables, token=token)
            assert body["errors"], body
            for error in body["errors"]:
                assert "Did you mean" not in error["message"], error
                assert "email" not in error["message"] and "PROCESSED" not in error["message"]
                assert error["extensions"]["requestId"]
    support = await make_key("support")
    field_hint = await gql(grant, bad_field, token=support)
    assert "Did you mean 'email'?" in field_hint["errors"][0]["message"]
    enum_hint = await gql(webhooks, bad_enum, token=support)
    assert "Did you mean the enum value 'PROCESSED'?" in enum_hint["errors"][0]["message"]


SHAPES = {
    "repeated fields": lambda: repeated_fields(150),
    "aliases": lambda: "{ " + " ".join(f"a{j}: plans {{ code name }}" for j in range(25)) + " }",
    "long string": lambda: '{ plans(locale: "' + "x" * 15_000 + '") { code } }',
    "page view": lambda: "query Viewer { viewer { tier credits { available } } }",
    "pricing": lambda: (
        "query ($locale: String) { pricing(locale: $locale) { locale currency } plans { code } }"
    ),
    "invalid": lambda: "{ viewr { email } plans { nope } }",
    "syntax error": lambda: "{ plans { code }",
}


@pytest.mark.parametrize("shape", SHAPES)
def test_byte_estimate_is_above_what_a_document_keeps_alive(shape: str) -> None:
    cache = DocumentCache(schema)
    make = SHAPES[shape]
    for i in range(30):
        # The first uses fill graphql-core's own caches (bounded, ~250 KB in all).
        cache.prepare(f"# warm-up {i}\n{make()}")
    copies = 40
    tracemalloc.start()
    try:
        prepared = [cache.prepare(f"# {i}\n{make()}") for i in range(copies)]
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    estimate = prepared[0].estimated_bytes
    assert estimate >= kept / copies, (estimate, kept / copies)
    # And not so far above that the cache holds a fraction of what its bound allows.
    assert estimate <= 4 * kept / copies + 20_000, (estimate, kept / copies)


def test_cache_stays_under_its_byte_bound_and_frees_what_it_evicts() -> None:
    thresholds = gc.get_threshold()
    # The production collector settings, under which evicted trees would otherwise pile up.
    gc.collect()
    gc.set_threshold(50_000, 50, 1000)
    cache = DocumentCache(schema, max_bytes=2_000_000)
    tracemalloc.start()
    try:
        for i in range(30):
            # Comments are tokens too: the linked list of tokens is the part of a tree that only
            # the cyclic collector frees.
            cache.add(f"{{ plans {{ code }} }} # {i}" + "\n#" * 1_500)
            assert cache.estimated_bytes <= cache.max_bytes
            # What the young collections under load do to a cached tree: promote it to the
            # oldest generation, where only a full collection finds it once it is evicted.
            gc.collect(1)
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.set_threshold(*thresholds)
    assert 0 < len(cache) < 30
    # Without the collection these trees keep ~8.5 MB alive; with it, at most the bound plus
    # the quarter evicted before a collection, 2.5 MB.
    assert kept < 3_000_000, kept


def test_throttle_refills_at_its_rate_and_shares_a_process_bucket() -> None:
    now = [100.0]
    throttle = DocumentThrottle(
        per_address=2, address_burst=2, per_process=3, process_burst=3, monotonic=lambda: now[0]
    )
    assert throttle.admit("a") is None and throttle.admit("a") is None
    assert throttle.admit("a") == 1
    assert throttle.admit("b") is None
    # "b" has tokens of its own, but all addresses together have spent the process's three.
    assert throttle.admit("b") == 1
    now[0] += 0.5
    assert throttle.admit("a") is None

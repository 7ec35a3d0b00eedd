"""`pricing` and `entitlementChanges` run on the compiled executor and answer as graphql-core does.

`both` (test_compiled) compiles each document, asserts that it compiled, runs the plan, then
graphql-core: a compiled answer that is not None is the compiled path answering. Where
graphql-core reports errors the plan must step aside (None), so the client gets graphql-core's
errors; over HTTP the production app (compiled first) must then answer byte for byte what the
graphql-core-only app answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.compiled.fields import FIELDS, TYPE_OF
from resolvers.ledger import credits, tiers
from resolvers.ledger.entries import Actor
from resolvers.users import UserRef
from schema.context import BadUserInput, Principal
from tests.conftest import StatementCounter
from tests.factories import make_user
from tests.schema.conftest import GraphQLClient, data_of, user_token
from tests.schema.test_compiled import SCHEMA, both, documents, seed

SUPPORT = Principal(role="support", name="s")
ADMIN = Principal(role="admin", name="a")
DASHBOARD = Principal(role="dashboard", name="d")

# User fields still on graphql-core (a TierChange's or CreditEvent's user may select them).
UNCOMPILED = {"premiumOverlay"}

CHANGES = """
query Q($rid: String!) {
  entitlementChanges(requestId: $rid) {
    kind: __typename
    ... on CreditEvent { amount requestId user { email tier } }
    ...Tier
    ... on EntitlementOverride @include(if: true) { feature hasAccess limit expiresAt userId }
    ... on EntitlementChange { __typename }
  }
}
fragment Tier on TierChange { fromTier toTier createdAt who: actor user { id } }
"""


def test_every_field_under_pricing_and_entitlement_changes_is_compiled() -> None:
    # A field missing here would send every document that selects it to graphql-core.
    for name in (
        "Pricing",
        "TierCard",
        "TierEntitlement",
        "CreditPackCard",
        "Cta",
        "CreditEvent",
        "TierChange",
        "EntitlementOverride",
        "User",
    ):
        assert set(FIELDS[name]) == set(SCHEMA.get_type(name).fields) - UNCOMPILED, name
    # The query union, and the result unions of the compiled writes (test_compiled_writes).
    assert set(TYPE_OF) == {
        "EntitlementChange",
        "CreditChangeResult",
        "SetTierResult",
        "ReserveCreditsResult",
        "ReleaseHoldResult",
        "RecordUsageResult",
        "SetEntitlementOverrideResult",
    }


async def random_documents(
    runtime, clock, root: str, principals_of: Any, first: tuple[str, ...] = ()
) -> list[tuple[str, dict[str, Any]]]:
    """Random documents at `root`, each on both executors; the compiled answers given.

    `first`: documents run before the random ones (anonymously, asking for German), so that
    what the caller asserts of the answers does not hang on what the draw happened to select.
    """
    emails, ids = await seed(runtime, clock)
    principals = principals_of(ids)
    loop = asyncio.get_running_loop()
    answered: list[tuple[str, dict[str, Any]]] = []

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        document=documents(emails, ids, roots=[root]),
        principal=st.sampled_from(principals),
        accept_language=st.sampled_from([None, "de-DE,de;q=0.9", "nl, en;q=0.5", "zz, !!"]),
    )
    def check(
        document: tuple[str, dict[str, Any]],
        principal: Principal | None,
        accept_language: str | None,
    ) -> None:
        query, variables = document
        future = asyncio.run_coroutine_threadsafe(
            both(runtime, principal, query, variables, accept_language), loop
        )
        compiled, result = future.result()
        if result.errors:
            assert compiled is None, (query, result.errors)
        else:
            assert orjson.dumps(compiled) == orjson.dumps(result.data), query
            answered.append((query, compiled))

    for query in first:
        check = example(document=(query, {}), principal=None, accept_language="de-DE")(check)
    await asyncio.to_thread(check)
    return answered


@pytest.mark.slow
async def test_random_pricing_documents_answer_the_same(runtime, clock) -> None:
    answered = await random_documents(
        runtime,
        clock,
        "pricing",
        lambda ids: [
            Principal(role="viewer", name="u", user_id=ids[0]),
            Principal(role="viewer", name="u", user_id=ids[2]),  # stored locale nl, pro
            Principal(role="viewer", name="u", user_id=ids[-1]),  # no such user
            SUPPORT,
            None,
        ],
        first=("query Q { pricing { locale currency } }",),
    )
    assert len(answered) > 20  # only an unsold currency is an error
    assert {data["pricing"].get("locale") for _, data in answered} - {None}


@pytest.mark.slow
async def test_random_change_documents_answer_the_same(runtime, clock) -> None:
    answered = await random_documents(
        runtime,
        clock,
        "entitlementChanges",
        # Mostly roles that may read it; the others must get graphql-core's errors.
        lambda ids: [SUPPORT, ADMIN, SUPPORT, DASHBOARD, None],
    )
    assert len(answered) > 10
    # The union's members were answered, not only empty lists.
    assert any(data["entitlementChanges"] for _, data in answered)


async def test_pricing_answers_from_the_plan_in_every_locale(runtime, clock) -> None:
    _emails, ids = await seed(runtime, clock)
    dutch_pro = Principal(role="viewer", name="u", user_id=ids[2])
    free = Principal(role="viewer", name="u", user_id=ids[0])
    query = """
    query Q($locale: String, $currency: String, $cards: Boolean!) {
      pricing(locale: $locale, currency: $currency) {
        __typename locale currency
        cards: tiers @include(if: $cards) {
          code name price amount perMonth allowance features isCurrent trialDays
          entitlements { feature text limit per __typename }
          cta { ...Cta } upgradeUrl manageUrl
        }
        creditPacks { code name credits price cta { ...Cta } buyCreditsUrl }
        sidebarCta @skip(if: $cards) { ...Cta }
      }
    }
    fragment Cta on Cta { kind label url }
    """
    pages = {}
    for name, principal, accept_language, variables in [
        ("nl", None, None, {"locale": "nl", "cards": True}),
        ("de", free, None, {"locale": "de", "cards": True}),
        ("unknown", None, None, {"locale": "xx", "cards": False}),
        ("header", None, "de-DE,de;q=0.9", {"cards": True}),
        ("stored", dutch_pro, "de-DE", {"cards": True}),
        ("dollars", free, None, {"locale": "nl", "currency": "usd", "cards": False}),
    ]:
        compiled, result = await both(runtime, principal, query, variables, accept_language)
        assert result.errors is None, (name, result.errors)
        assert compiled is not None, name  # the plan answered
        assert orjson.dumps(compiled) == orjson.dumps(result.data), name
        pages[name] = compiled["pricing"]

    assert (pages["nl"]["locale"], pages["nl"]["currency"]) == ("nl", "EUR")
    assert pages["nl"]["cards"][0]["name"] == "Gratis"
    assert any("per maand" in e["text"] for e in pages["nl"]["cards"][1]["entitlements"])
    assert pages["de"]["locale"] == "de"
    assert [c["cta"]["kind"] for c in pages["de"]["cards"]][:2] == ["CURRENT", "UPGRADE"]
    assert pages["unknown"]["locale"] == "en" and "cards" not in pages["unknown"]
    assert pages["unknown"]["sidebarCta"]["kind"] == "SIGNUP"
    assert pages["header"]["locale"] == "de-DE"
    # The viewer's stored locale beats Accept-Language; a pro viewer's card is current.
    assert pages["stored"]["locale"] == "nl"
    assert [c["code"] for c in pages["stored"]["cards"] if c["isCurrent"]] == ["pro"]
    assert pages["dollars"]["currency"] == "USD"


async def test_an_unsold_currency_leaves_pricing_to_graphql_core(runtime, clock) -> None:
    await seed(runtime, clock)
    query = 'query Q { pricing(locale: "en-GB", currency: "GBP") { currency } }'
    compiled, result = await both(runtime, None, query, {})
    assert compiled is None
    assert [type(e.original_error) for e in result.errors] == [BadUserInput]
    assert str(result.errors[0]).startswith("currency: 'GBP' is not sold here")


async def test_entitlement_changes_answer_from_the_plan(runtime, clock) -> None:
    await seed(runtime, clock)
    for principal in (SUPPORT, ADMIN):
        compiled, result = await both(runtime, principal, CHANGES, {"rid": "req-test"})
        assert result.errors is None
        assert compiled is not None
        assert orjson.dumps(compiled) == orjson.dumps(result.data)
    changes = compiled["entitlementChanges"]
    assert {c["kind"] for c in changes} == {"CreditEvent", "TierChange", "EntitlementOverride"}
    moves = [(c["fromTier"], c["toTier"]) for c in changes if c["kind"] == "TierChange"]
    assert moves == [("free", "pro"), ("pro", "free")]  # oldest first
    assert all(c["__typename"] == c["kind"] for c in changes)
    compiled, result = await both(runtime, SUPPORT, CHANGES, {"rid": "req-none"})
    assert compiled == result.data == {"entitlementChanges": []}


async def test_roles_that_may_not_read_changes_get_graphql_cores_errors(
    runtime, clock, make_key
) -> None:
    _emails, ids = await seed(runtime, clock)
    for principal in (DASHBOARD, Principal(role="service", name="k"), None):
        compiled, result = await both(runtime, principal, CHANGES, {"rid": "req-test"})
        assert compiled is None
        assert result.errors

    tokens = (await make_key("dashboard"), user_token(ids[0]), None)
    bodies = {}
    for executor in ("compiled", "graphql-core"):
        transport = httpx.ASGITransport(app=create_app(runtime, executor=executor))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
            gql = GraphQLClient(http)
            answers = []
            for token in tokens:
                response = await gql.post(CHANGES, {"rid": "req-test"}, token=token)
                body = response.json()
                for error in body.get("errors", []):
                    error.get("extensions", {}).pop("requestId", None)
                answers.append((response.status_code, body))
            bodies[executor] = answers
    assert bodies["compiled"] == bodies["graphql-core"]
    codes = [[e["extensions"]["code"] for e in body["errors"]] for _, body in bodies["compiled"]]
    assert codes == [["FORBIDDEN"], ["FORBIDDEN"], ["UNAUTHENTICATED"]]


@pytest.fixture(params=["compiled", "graphql-core"])
async def alone(runtime, request) -> AsyncIterator[GraphQLClient]:
    """Each executor alone: running both would count statements twice."""
    transport = httpx.ASGITransport(app=create_app(runtime, executor=request.param))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        yield GraphQLClient(http)


async def add_changes(runtime, users: int) -> None:
    """Under one request id: a grant to each of `users` new users, and a tier change each."""
    actor = Actor(name="test-support", source="support", request_id="req-many")
    for _ in range(users):
        user = await make_user(runtime)

        async def change(session, user_id=user.id):
            now = runtime.clock()
            ref = UserRef(user_id=user_id)
            granted = await credits.grant_ai_credits(
                session, user=ref, amount=5, reason="many", actor=actor, now=now
            )
            assert isinstance(granted, credits.CreditChanged), granted
            moved = await tiers.set_tier(
                session,
                user=ref,
                tier="pro",
                reason="many",
                actor=actor,
                now=now,
                catalog=runtime.catalog,
            )
            assert isinstance(moved, tiers.TierSet), moved

        await runtime.db.write(change)


async def test_change_statements_do_not_grow_with_the_list(runtime, alone, make_key, db) -> None:
    support = await make_key("support")
    counter = StatementCounter(db)
    try:
        await alone("{ plans { code } }", token=support)  # the key is looked up once, then cached
        await add_changes(runtime, 2)
        counter.reset()
        small = data_of(await alone(CHANGES, {"rid": "req-many"}, token=support))
        at_small = counter.count
        await add_changes(runtime, 20)
        counter.reset()
        large = data_of(await alone(CHANGES, {"rid": "req-many"}, token=support))
        at_large = counter.count
    finally:
        counter.close()
    # Each user: the grant, the tier change, and the pro allowance the change granted.
    assert len(small["entitlementChanges"]) == 2 * 3
    assert len(large["entitlementChanges"]) == 22 * 3
    users = [c["user"] for c in large["entitlementChanges"] if c["kind"] == "CreditEvent"]
    assert {u["tier"] for u in users} == {"pro"}
    # Events, tier changes, overrides, then their users: four statements, none per row.
    assert at_small == at_large == 4, (at_small, at_large)

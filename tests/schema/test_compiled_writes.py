"""The credit, tier and hold mutations: the write made once, its answer from the compiled plan.

Every step runs two ways. Over HTTP through the app with executor "both": the compiled executor
makes the write and answers, then graphql-core answers the same document from the outcome of
that write (the Strawberry resolver does not write again), and the two answers must be equal
byte for byte. And on the executors themselves, which also shows that the compiled executor
answered (not None) rather than stepped aside.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import orjson
import pytest
from graphql import ExecutionResult, parse, validate
from graphql import execute as graphql_execute
from sqlalchemy import func, select

from gateway.app import create_app
from gateway.compiled import execution
from gateway.compiled.plan import compile_operation
from gateway.runtime import Runtime
from resolvers.models import CreditEvent
from schema import schema
from schema.context import Context, Principal
from tests.factories import make_user
from tests.schema.conftest import GraphQLClient, data_of, error_codes, user_token
from tests.schema.test_compiled import context_for

SCHEMA = schema._schema

ERRORS = """
    ... on Error { code message }
    ... on InvalidInput { field }
    ... on IdempotencyConflict { idempotencyKey }
"""
NOT_FOUND = "... on UserNotFound { email userId }"
SHORT = "... on InsufficientCredits { available requested }"
EVENT = """
    id kind amount balanceAfter reason source actor requestId createdAt grantId paymentId
    user { id email }
"""
SELECTIONS = {
    "CreditChangeResult": f"""
        kind: __typename
        ... on CreditChange {{
          replayed
          event {{ {EVENT} }}
          user {{ id tier credits {{ available nextExpiry grants {{ id remaining expiresAt }} }} }}
        }}
        {ERRORS} {NOT_FOUND} {SHORT}
        ... on HoldNotFound {{ missing: holdId }}
        ... on HoldNotActive {{ holdId status }}
        ... on HoldExpired {{ holdId expiresAt }}
    """,
    "SetTierResult": f"""
        __typename
        ... on TierUpdate {{
          replayed
          change {{ id fromTier toTier reason source actor requestId createdAt user {{ tier }} }}
          user {{ id tier plan {{ code monthlyCredits features }} }}
        }}
        {ERRORS} {NOT_FOUND}
        ... on UnknownTier {{ tier knownTiers }}
    """,
    "ReserveCreditsResult": f"""
        __typename
        ... on CreditHold {{
          id amount reason status expiresAt createdAt settledAmount
          user {{ id credits {{ available }} }}
        }}
        {ERRORS} {NOT_FOUND} {SHORT}
    """,
    "ReleaseHoldResult": f"""
        __typename
        ... on CreditHold {{ id amount status settledAmount user {{ email }} }}
        {ERRORS}
        ... on HoldNotFound {{ missing: holdId }}
        ... on HoldNotActive {{ holdId status }}
    """,
    "RecordUsageResult": f"""
        __typename
        ... on EntitlementUsage {{
          quantity replayed
          entitlement {{ feature hasAccess limit usage remaining resetsAt source }}
          user {{ id tier }}
        }}
        {ERRORS} {NOT_FOUND}
        ... on LimitExceeded {{ feature limit usage requested }}
        ... on NoAccess {{ feature }}
        ... on UnknownFeature {{ feature knownFeatures }}
    """,
    "SetEntitlementOverrideResult": f"""
        __typename
        ... on EntitlementOverrideChange {{
          replayed
          override {{
            id feature hasAccess limit expiresAt reason source actor requestId createdAt userId
          }}
          entitlement {{ feature hasAccess limit usage remaining resetsAt source }}
          user {{ id tier entitlement(feature: "pdf_exports") {{ limit remaining source }} }}
        }}
        {ERRORS} {NOT_FOUND}
        ... on UnknownFeature {{ feature knownFeatures }}
    """,
}
# Each compiled write: its input type and its result union.
WRITES = {
    "grantCredits": ("GrantCreditsInput", "CreditChangeResult"),
    "consumeCredits": ("ConsumeCreditsInput", "CreditChangeResult"),
    "setTier": ("SetTierInput", "SetTierResult"),
    "reserveCredits": ("ReserveCreditsInput", "ReserveCreditsResult"),
    "settleHold": ("SettleHoldInput", "CreditChangeResult"),
    "releaseHold": ("ReleaseHoldInput", "ReleaseHoldResult"),
    "recordUsage": ("RecordUsageInput", "RecordUsageResult"),
    "setEntitlementOverride": ("SetEntitlementOverrideInput", "SetEntitlementOverrideResult"),
}
SUPPORT = Principal(role="support", name="support-key")

Send = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


def document_of(name: str) -> str:
    input_type, union = WRITES[name]
    return f"""
mutation Write($input: {input_type}!) {{
  {name}(input: $input) {{ {SELECTIONS[union]} }}
}}"""


def compiles(query: str) -> bool:
    document = parse(query)
    assert validate(SCHEMA, document) == [], query
    return compile_operation(SCHEMA, document, None) is not None


async def on_both_executors(
    context: Context, query: str, variables: dict[str, Any]
) -> tuple[dict[str, Any] | None, ExecutionResult]:
    """The compiled answer, then graphql-core's on the same context, as route's "both" does."""
    document = parse(query)
    plan = compile_operation(SCHEMA, document, None)
    assert plan is not None, query
    compiled = await execution.execute(plan, context, variables)
    result = graphql_execute(SCHEMA, document, context_value=context, variable_values=variables)
    if not isinstance(result, ExecutionResult):
        result = await result
    return compiled, result


def executor_sender(runtime: Runtime, principal: Principal) -> Send:
    async def send(name: str, fields: dict[str, Any]) -> dict[str, Any]:
        query = document_of(name)
        context = context_for(runtime, principal)
        compiled, result = await on_both_executors(context, query, {"input": fields})
        assert result.errors is None, result.errors
        assert compiled is not None, (name, fields)
        assert orjson.dumps(compiled) == orjson.dumps(result.data)
        # graphql-core answered from the write the compiled run made.
        assert context.written(name) is not None
        return compiled[name]

    return send


def http_sender(gql: GraphQLClient, key: str) -> Send:
    async def send(name: str, fields: dict[str, Any]) -> dict[str, Any]:
        query = document_of(name)
        assert compiles(query)
        return data_of(await gql(query, {"input": fields}, token=key))[name]

    return send


@pytest.fixture(params=["http", "executor"])
async def send(request, gql: GraphQLClient, runtime: Runtime, make_key) -> Send:
    if request.param == "http":
        return http_sender(gql, await make_key("support"))
    return executor_sender(runtime, SUPPORT)


async def consume_events(runtime: Runtime, user_id: int) -> int:
    async with runtime.db.read() as session:
        counted = await session.scalar(
            select(func.count())
            .select_from(CreditEvent)
            .where(CreditEvent.user_id == user_id, CreditEvent.kind == "consume")
        )
    return int(counted or 0)


async def test_every_write_and_every_failure_member_answers_compiled(
    send: Send, runtime: Runtime
) -> None:
    user = await make_user(runtime, credits_granted=50, calendar_allowances=False)
    uid = str(user.id)

    async def expect(name: str, fields: dict[str, Any], typename: str) -> dict[str, Any]:
        answer = await send(name, fields)
        assert answer.get("__typename", answer.get("kind")) == typename, (name, answer)
        return answer

    grant = {"userId": uid, "amount": 5, "reason": "gift", "idempotencyKey": "g-1"}
    first = await expect("grantCredits", grant, "CreditChange")
    again = await expect("grantCredits", grant, "CreditChange")
    assert (first["replayed"], again["replayed"]) == (False, True)
    assert again["event"] == first["event"]
    await expect("grantCredits", {**grant, "amount": 6}, "IdempotencyConflict")
    both_refs = {"userId": uid, "email": user.email, "amount": 1, "reason": "x"}
    assert (await expect("grantCredits", both_refs, "InvalidInput"))["field"] == "email"
    await expect("grantCredits", {"userId": "99999999", "amount": 1, "reason": "x"}, "UserNotFound")

    spent = await expect("consumeCredits", {"userId": uid, "amount": 3}, "CreditChange")
    assert spent["event"]["balanceAfter"] == 52
    assert spent["user"]["credits"]["available"] == 52
    short = await expect(
        "consumeCredits", {"email": user.email, "amount": 10**6}, "InsufficientCredits"
    )
    assert (short["available"], short["requested"]) == (52, 10**6)
    await expect("consumeCredits", {"email": "nobody@example.com", "amount": 1}, "UserNotFound")
    assert (await expect("consumeCredits", {"userId": uid, "amount": 0}, "InvalidInput"))[
        "field"
    ] == "amount"

    moved = await expect("setTier", {"userId": uid, "tier": "pro", "reason": "r"}, "TierUpdate")
    assert moved["change"]["toTier"] == "pro" and moved["user"]["plan"]["code"] == "pro"
    same = await expect("setTier", {"userId": uid, "tier": "pro", "reason": "r"}, "TierUpdate")
    assert same["change"] is None
    unknown = await expect("setTier", {"userId": uid, "tier": "gold", "reason": "r"}, "UnknownTier")
    assert "pro" in unknown["knownTiers"]
    await expect("setTier", {"userId": "99999999", "tier": "pro", "reason": "r"}, "UserNotFound")

    hold = await expect(
        "reserveCredits", {"userId": uid, "amount": 4, "reason": "call"}, "CreditHold"
    )
    assert (hold["status"], hold["user"]["credits"]["available"]) == ("ACTIVE", 48)
    await expect(
        "reserveCredits", {"userId": uid, "amount": 10**6, "reason": "x"}, "InsufficientCredits"
    )
    settled = await expect("settleHold", {"holdId": hold["id"], "amount": 2}, "CreditChange")
    assert settled["event"]["kind"] == "settle"
    late = await expect("settleHold", {"holdId": hold["id"], "amount": 1}, "HoldNotActive")
    assert late["status"] == "SETTLED"
    await expect("settleHold", {"holdId": "nope", "amount": 1}, "HoldNotFound")
    assert (await expect("releaseHold", {"holdId": hold["id"]}, "HoldNotActive"))[
        "status"
    ] == "SETTLED"
    other = await expect(
        "reserveCredits",
        {"userId": uid, "amount": 2, "reason": "r", "ttlSeconds": 30},
        "CreditHold",
    )
    released = await expect("releaseHold", {"holdId": other["id"]}, "CreditHold")
    assert released["status"] == "RELEASED"
    await expect("releaseHold", {"holdId": "nope"}, "HoldNotFound")
    run_out = await expect(
        "reserveCredits",
        {"userId": uid, "amount": 1, "reason": "r", "ttlSeconds": 30},
        "CreditHold",
    )
    runtime.clock.advance(seconds=31)
    expired = await expect("settleHold", {"holdId": run_out["id"], "amount": 1}, "HoldExpired")
    assert expired["holdId"] == run_out["id"]
    assert await consume_events(runtime, user.id) == 1


async def test_record_usage_and_each_failure_member_answer_compiled(
    send: Send, runtime: Runtime
) -> None:
    user = await make_user(runtime)  # free: 5 PDF exports a month, no API access
    uid = str(user.id)

    async def expect(fields: dict[str, Any], typename: str) -> dict[str, Any]:
        answer = await send("recordUsage", fields)
        assert answer["__typename"] == typename, answer
        return answer

    counted = await expect(
        {"userId": uid, "feature": "pdf_exports", "quantity": 2, "idempotencyKey": "u-1"},
        "EntitlementUsage",
    )
    assert (counted["quantity"], counted["entitlement"]["remaining"]) == (2, 3)
    again = await expect(
        {"email": user.email, "feature": "pdf_exports", "quantity": 2, "idempotencyKey": "u-1"},
        "EntitlementUsage",
    )
    assert again["replayed"] is True
    await expect(
        {"userId": uid, "feature": "pdf_exports", "quantity": 1, "idempotencyKey": "u-1"},
        "IdempotencyConflict",
    )
    over = await expect({"userId": uid, "feature": "pdf_exports", "quantity": 4}, "LimitExceeded")
    assert (over["limit"], over["usage"], over["requested"]) == (5, 2, 4)
    await expect({"userId": uid, "feature": "api_access"}, "NoAccess")
    assert (
        "pdf_exports"
        in (await expect({"userId": uid, "feature": "x"}, "UnknownFeature"))["knownFeatures"]
    )
    await expect({"email": "nobody@example.com", "feature": "pdf_exports"}, "UserNotFound")
    await expect({"feature": "pdf_exports"}, "InvalidInput")


RICH = """
mutation Spend($input: ConsumeCreditsInput!, $withUser: Boolean!, $skipEvent: Boolean!) {
  __typename
  spent: consumeCredits(input: $input) {
    t: __typename
    ...Change
    ... on CreditChangeResult { __typename }
    ... on Error @include(if: $withUser) { code }
    ... on InsufficientCredits { short: requested available }
  }
}
fragment Change on CreditChange {
  replayed
  event @skip(if: $skipEvent) { amount balanceAfter at: createdAt by: actor }
  user @include(if: $withUser) {
    __typename
    email
    credits { available }
    ...Ledger
  }
  user { id credits { grants { remaining } } }
}
fragment Ledger on User {
  creditEvents(first: 2) {
    edges { cursor node { kind amount user { id } } }
    pageInfo { hasNextPage }
  }
  plan { code }
}
"""


@pytest.mark.parametrize("with_user", [True, False])
@pytest.mark.parametrize("skip_event", [True, False])
async def test_aliases_fragments_directives_and_nested_selections(
    send_rich: Callable[..., Awaitable[dict[str, Any]]],
    runtime: Runtime,
    with_user: bool,
    skip_event: bool,
) -> None:
    user = await make_user(runtime, credits_granted=5, calendar_allowances=False)
    variables = {"withUser": with_user, "skipEvent": skip_event}
    for amount, typename in ((2, "CreditChange"), (99, "InsufficientCredits")):
        data = await send_rich({"input": {"userId": str(user.id), "amount": amount}, **variables})
        assert data["__typename"] == "Mutation"
        assert data["spent"]["t"] == data["spent"]["__typename"] == typename
        assert ("code" in data["spent"]) == (with_user and typename != "CreditChange")
    changed = await send_rich({"input": {"userId": str(user.id), "amount": 1}, **variables})
    assert ("event" in changed["spent"]) == (not skip_event)
    assert ("email" in changed["spent"]["user"]) == with_user
    assert changed["spent"]["user"]["credits"]["grants"] == [{"remaining": 2}]


@pytest.fixture(params=["http", "executor"])
async def send_rich(
    request, gql: GraphQLClient, runtime: Runtime, make_key
) -> Callable[..., Awaitable[dict[str, Any]]]:
    assert compiles(RICH)
    if request.param == "http":
        key = await make_key("service")

        async def over_http(variables: dict[str, Any]) -> dict[str, Any]:
            return data_of(await gql(RICH, variables, token=key))

        return over_http

    async def on_executors(variables: dict[str, Any]) -> dict[str, Any]:
        context = context_for(runtime, Principal(role="service", name="ai"))
        compiled, result = await on_both_executors(context, RICH, variables)
        assert result.errors is None and compiled is not None
        assert orjson.dumps(compiled) == orjson.dumps(result.data)
        return compiled

    return on_executors


@pytest.fixture
async def apps(runtime: Runtime) -> AsyncIterator[dict[str, GraphQLClient]]:
    """The app on each executor: production's (compiled first), graphql-core only, both."""
    async with AsyncExitStack() as stack:
        clients = {}
        for executor in ("compiled", "graphql-core", "both"):
            transport = httpx.ASGITransport(app=create_app(runtime, executor=executor))
            http = httpx.AsyncClient(transport=transport, base_url="http://gateway.test")
            clients[executor] = GraphQLClient(await stack.enter_async_context(http))
        yield clients


PAGED = """
mutation Spend($input: ConsumeCreditsInput!, $first: Int) {
  consumeCredits(input: $input) {
    __typename
    ... on CreditChange {
      event { amount balanceAfter }
      user { email creditEvents(first: $first) { edges { node { kind amount } } } }
    }
  }
}"""


@pytest.mark.parametrize("executor", ["compiled", "both"])
async def test_a_fallback_after_the_write_answers_it_without_writing_again(
    apps: dict[str, GraphQLClient], runtime: Runtime, make_key, executor: str
) -> None:
    service = await make_key("service")
    user = await make_user(runtime, credits_granted=10, calendar_allowances=False)
    assert compiles(PAGED)
    # `first` past the page limit is refused only once the answer reaches creditEvents: the
    # compiled run has written by then, and graphql-core answers, error and all.
    variables = {"input": {"userId": str(user.id), "amount": 1}, "first": 10_000}
    body = await apps[executor](PAGED, variables, token=service)
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["path"] == ["consumeCredits", "user", "creditEvents"]
    # creditEvents is non-null, and so is every field above it: null reaches `data`.
    assert body["data"] is None
    assert await consume_events(runtime, user.id) == 1

    # On the executors: the compiled one stepped aside after writing, graphql-core answered
    # with the write's outcome, and the ledger has that one spend more.
    context = context_for(runtime, Principal(role="service", name="ai"))
    compiled, result = await on_both_executors(context, PAGED, variables)
    assert compiled is None
    assert [e.path for e in result.errors or []] == [["consumeCredits", "user", "creditEvents"]]
    assert result.data is None
    assert context.written("consumeCredits").event.balance_after == 8
    assert await consume_events(runtime, user.id) == 2

    # The same document within the page limit is answered compiled.
    variables["first"] = 1
    data = data_of(await apps[executor](PAGED, variables, token=service))
    assert data["consumeCredits"]["user"]["creditEvents"]["edges"] == [
        {"node": {"kind": "consume", "amount": -1}}
    ]
    assert await consume_events(runtime, user.id) == 3


def without_request_ids(body: dict[str, Any]) -> dict[str, Any]:
    for error in body.get("errors", []):
        error.get("extensions", {}).pop("requestId", None)
    return body


async def test_refusals_and_input_errors_answer_as_graphql_core_does(
    apps: dict[str, GraphQLClient], runtime: Runtime, make_key
) -> None:
    service = await make_key("service")
    dashboard = await make_key("dashboard")
    user = await make_user(runtime, credits_granted=10, calendar_allowances=False)
    uid = str(user.id)
    query = document_of("consumeCredits")
    sent = [
        # A viewer spends nothing, not even their own credits: the role is checked in the plan.
        (user_token(user.id), {"input": {"userId": uid, "amount": 1}}),
        (dashboard, {"input": {"userId": uid, "amount": 1}}),
        (None, {"input": {"userId": uid, "amount": 1}}),
        # Variables graphql-core refuses before any field runs.
        (service, {"input": {"userId": uid, "amount": "one"}}),
        (service, {"input": {"userId": uid}}),
        (service, {}),
        # Refused text: the argument guard answers InvalidInput without calling the resolver.
        (service, {"input": {"userId": uid, "amount": 1, "reason": "bad\u0000text"}}),
        (service, {"input": {"userId": uid, "amount": 1, "idempotencyKey": "k" * 10_000}}),
    ]
    for token, variables in sent:
        answers = [
            without_request_ids(await apps[executor](query, variables, token=token))
            for executor in ("compiled", "graphql-core", "both")
        ]
        assert answers[0] == answers[1] == answers[2], (token, variables)
        assert "errors" in answers[0] or answers[0]["data"]["consumeCredits"]["kind"] == (
            "InvalidInput"
        ), answers[0]
    assert await consume_events(runtime, user.id) == 0


async def test_documents_the_plan_leaves_to_graphql_core(
    apps: dict[str, GraphQLClient], runtime: Runtime, make_key
) -> None:
    service = await make_key("service")
    user = await make_user(runtime, credits_granted=10, calendar_allowances=False)
    two = """
    mutation Two($a: ConsumeCreditsInput!, $b: ConsumeCreditsInput!) {
      first: consumeCredits(input: $a) { __typename }
      second: consumeCredits(input: $b) { __typename }
    }"""
    uncovered = """
    mutation Held($input: ConsumeCreditsInput!) {
      consumeCredits(input: $input) { ... on CreditChange { user { credits { held } } } }
    }"""
    spread = """
    mutation Spread($input: ConsumeCreditsInput!) { ...Root }
    fragment Root on Mutation { consumeCredits(input: $input) { __typename } }
    """
    upsert = 'mutation { upsertUser(input: {email: "new@example.com"}) { __typename } }'
    for query in (two, uncovered, spread, upsert):
        assert not compiles(query), query
    spend = {"userId": str(user.id), "amount": 1}
    body = data_of(await apps["both"](two, {"a": spend, "b": spend}, token=service))
    assert body == {
        "first": {"__typename": "CreditChange"},
        "second": {"__typename": "CreditChange"},
    }
    body = data_of(await apps["compiled"](uncovered, {"input": spend}, token=service))
    assert body == {"consumeCredits": {"user": {"credits": {"held": 0}}}}
    assert await consume_events(runtime, user.id) == 3

"""The runbook's sections 2 and 3 done over GraphQL with a support key, as GraphiQL would."""

from __future__ import annotations

from datetime import timedelta

from tests.factories import make_user
from tests.schema.conftest import data_of, user_token

USER_STATE = """
query ($email: String!) {
  user(email: $email) {
    id email tier stripeCustomerId
    credits { available grants { amount remaining expiresAt } nextExpiry }
    creditEvents(first: 5) { edges { node { kind amount balanceAfter reason requestId } } }
  }
}
"""
GRANT = """
mutation ($input: GrantCreditsInput!) {
  grantCredits(input: $input) {
    __typename
    ... on CreditChange {
      replayed
      event { id amount balanceAfter requestId source actor }
      user { credits { available } }
    }
    ... on Error { message code }
    ... on InvalidInput { field }
  }
}
"""
CONSUME = """
mutation ($input: ConsumeCreditsInput!) {
  consumeCredits(input: $input) {
    __typename
    ... on CreditChange { replayed event { id amount balanceAfter } }
    ... on InsufficientCredits { available requested }
    ... on Error { message code }
  }
}
"""
SET_TIER = """
mutation ($input: SetTierInput!) {
  setTier(input: $input) {
    __typename
    ... on TierUpdate {
      user { tier plan { code monthlyCredits } }
      change { fromTier toTier requestId }
    }
    ... on UnknownTier { knownTiers }
    ... on Error { message code }
  }
}
"""
CHANGES = """
query ($rid: String!) {
  entitlementChanges(requestId: $rid) {
    __typename
    ... on CreditEvent { kind amount user { email } }
    ... on TierChange { fromTier toTier user { email } }
  }
}
"""


async def test_support_verifies_adjusts_and_traces_an_account(runtime, gql, make_key) -> None:
    support = await make_key("support")
    user = await make_user(runtime, credits_granted=20)

    state = data_of(await gql(USER_STATE, {"email": user.email.upper()}, token=support))["user"]
    assert state["tier"] == "free"
    assert state["credits"]["available"] == 20
    assert [e["node"]["kind"] for e in state["creditEvents"]["edges"]] == ["grant"]

    response = await gql.post(
        GRANT,
        {"input": {"email": user.email, "amount": 100, "reason": "goodwill"}},
        token=support,
        headers={"X-Request-ID": "ticket-4711"},
    )
    assert response.headers["x-request-id"] == "ticket-4711"
    granted = data_of(response.json())["grantCredits"]
    assert granted["__typename"] == "CreditChange"
    assert granted["event"]["amount"] == 100
    assert granted["event"]["balanceAfter"] == 120
    assert granted["event"]["requestId"] == "ticket-4711"
    assert granted["event"]["source"] == "support"
    assert granted["event"]["actor"] == "key:support-key"

    consumed = data_of(
        await gql(
            CONSUME,
            {"input": {"email": user.email, "amount": 50, "reason": "support-adjustment"}},
            token=support,
        )
    )["consumeCredits"]
    assert consumed["event"]["balanceAfter"] == 70

    response = await gql.post(
        SET_TIER,
        {"input": {"email": user.email, "tier": "pro", "reason": "reset plan tier"}},
        token=support,
        headers={"X-Request-ID": "ticket-4712"},
    )
    updated = data_of(response.json())["setTier"]
    assert updated["user"]["tier"] == "pro"
    assert updated["change"] == {"fromTier": "free", "toTier": "pro", "requestId": "ticket-4712"}

    changes = data_of(await gql(CHANGES, {"rid": "ticket-4712"}, token=support))
    kinds = [c["__typename"] for c in changes["entitlementChanges"]]
    assert "TierChange" in kinds and "CreditEvent" in kinds  # the pro allowance came with it
    assert data_of(await gql(CHANGES, {"rid": "ticket-4711"}, token=support))[
        "entitlementChanges"
    ] == [
        {"__typename": "CreditEvent", "kind": "grant", "amount": 100, "user": {"email": user.email}}
    ]


async def test_mutation_failures_are_typed_values(runtime, gql, make_key) -> None:
    support = await make_key("support")
    user = await make_user(runtime, credits_granted=5)
    short = data_of(
        await gql(CONSUME, {"input": {"email": user.email, "amount": 6}}, token=support)
    )["consumeCredits"]
    assert short == {
        "__typename": "InsufficientCredits",
        "available": 5,
        "requested": 6,
        "message": "Only 5 credits available, 6 requested",
        "code": "INSUFFICIENT_CREDITS",
    }
    missing = data_of(
        await gql(CONSUME, {"input": {"email": "ghost@example.com", "amount": 1}}, token=support)
    )["consumeCredits"]
    assert missing["code"] == "USER_NOT_FOUND"
    for bad, field in (
        ({"email": user.email, "amount": 0, "reason": "x"}, "amount"),
        ({"email": user.email, "amount": 10_000_000, "reason": "x"}, "amount"),
        ({"email": "not-an-email", "amount": 1, "reason": "x"}, "email"),
        ({"amount": 1, "reason": "x"}, "email"),
        ({"email": user.email, "amount": 1, "reason": ""}, "reason"),
        ({"email": user.email, "amount": 1, "reason": "x" * 501}, "reason"),
    ):
        result = data_of(await gql(GRANT, {"input": bad}, token=support))["grantCredits"]
        assert (result["__typename"], result["field"]) == ("InvalidInput", field), bad
    unknown = data_of(
        await gql(
            SET_TIER, {"input": {"email": user.email, "tier": "gold", "reason": "x"}}, token=support
        )
    )["setTier"]
    assert unknown["__typename"] == "UnknownTier"
    assert unknown["knownTiers"] == ["free", "pro", "team"]


async def test_idempotency_key_replays_and_conflicts(runtime, gql, make_key) -> None:
    service = await make_key("service")
    user = await make_user(runtime, credits_granted=10)
    args = {"userId": str(user.id), "amount": 3, "reason": "chat", "idempotencyKey": "call-1"}
    first = data_of(await gql(CONSUME, {"input": args}, token=service))["consumeCredits"]
    again = data_of(await gql(CONSUME, {"input": args}, token=service))["consumeCredits"]
    assert again["replayed"] is True and first["replayed"] is False
    assert again["event"]["id"] == first["event"]["id"]
    other = data_of(await gql(CONSUME, {"input": {**args, "amount": 4}}, token=service))
    assert other["consumeCredits"]["code"] == "IDEMPOTENCY_CONFLICT"
    state = data_of(await gql(USER_STATE, {"email": user.email}, token=await make_key("support")))
    assert state["user"]["credits"]["available"] == 7


UPSERT = """
mutation ($input: UpsertUserInput!) {
  upsertUser(input: $input) {
    __typename
    ... on UserUpsert { created user { email locale externalId tier } }
    ... on InvalidInput { field }
  }
}
"""


async def test_service_upserts_users_from_the_main_app(gql, make_key) -> None:
    service = await make_key("service")
    first = data_of(
        await gql(
            UPSERT, {"input": {"email": "Sam@Example.com", "externalId": "u-1"}}, token=service
        )
    )["upsertUser"]
    assert first == {
        "__typename": "UserUpsert",
        "created": True,
        "user": {"email": "sam@example.com", "locale": None, "externalId": "u-1", "tier": "free"},
    }
    again = data_of(
        await gql(UPSERT, {"input": {"email": "sam@example.com", "locale": "nl"}}, token=service)
    )["upsertUser"]
    assert again["created"] is False and again["user"]["locale"] == "nl"
    assert again["user"]["externalId"] == "u-1"
    for bad, field in (
        ({"email": "nope"}, "email"),
        ({"email": "a@b.co", "locale": "??"}, "locale"),
    ):
        result = data_of(await gql(UPSERT, {"input": bad}, token=service))["upsertUser"]
        assert result == {"__typename": "InvalidInput", "field": field}


async def test_odd_ids_and_times_are_typed_errors_not_crashes(runtime, gql, make_key) -> None:
    support = await make_key("support")
    user = await make_user(runtime)
    naive = data_of(
        await gql(
            GRANT,
            {"input": {"email": user.email, "amount": 1, "reason": "x",
                       "expiresAt": "2030-01-01T00:00:00"}},
            token=support,
        )
    )["grantCredits"]  # fmt: skip
    assert (naive["__typename"], naive["field"]) == ("InvalidInput", "expiresAt")
    for bad_id in ("²", "9" * 30, "-1", "0"):
        spent = data_of(
            await gql(CONSUME, {"input": {"userId": bad_id, "amount": 1}}, token=support)
        )["consumeCredits"]
        assert spent["code"] == "INVALID_INPUT", bad_id
        found = data_of(await gql("query ($i: ID) { user(id: $i) { id } }", {"i": bad_id},
                                  token=support))  # fmt: skip
        assert found == {"user": None}
    ghost = user_token(987_654)  # validly signed, for a user this gateway does not have
    assert data_of(await gql("{ viewer { id } }", token=ghost)) == {"viewer": None}
    tracked = await gql(
        'mutation { trackEvent(input: {name: "cta_upgrade_click"}) { __typename } }', token=ghost
    )
    assert data_of(tracked)["trackEvent"]["__typename"] == "UserNotFound"


async def test_balance_read_leaves_out_grants_expired_since_the_last_write(
    runtime, gql, make_key
) -> None:
    support = await make_key("support")
    user = await make_user(runtime, credits_granted=10)
    await gql(
        GRANT,
        {"input": {"email": user.email, "amount": 5, "reason": "short-lived",
                   "expiresAt": (runtime.clock() + timedelta(hours=1)).isoformat()}},
        token=support,
    )  # fmt: skip
    query = "query ($e: String) { users(first: 5) { edges { node { credits { available "
    query += "nextExpiry grants { amount } } } } } user(email: $e) { credits { available } } }"
    before = data_of(await gql(query, {"e": user.email}, token=support))
    assert before["users"]["edges"][0]["node"]["credits"]["available"] == 15
    runtime.clock.advance(hours=2)
    after = data_of(await gql(query, {"e": user.email}, token=support))
    listed = after["users"]["edges"][0]["node"]["credits"]
    assert listed == {"available": 10, "nextExpiry": None, "grants": [{"amount": 10}]}
    assert after["user"]["credits"]["available"] == 10

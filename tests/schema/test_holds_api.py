"""Holds over HTTP: reserve, settle and release as the AI backend calls them, and who sees what."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from gateway.runtime import Runtime
from tests.factories import make_user
from tests.schema.conftest import GraphQLClient, data_of, error_codes, user_token

RESERVE = """
mutation($input: ReserveCreditsInput!) {
  reserveCredits(input: $input) {
    __typename
    ... on CreditHold { id amount reason status expiresAt createdAt settledAmount user { id } }
    ... on Error { code message }
    ... on InsufficientCredits { available requested }
    ... on InvalidInput { field }
  }
}"""
SETTLE = """
mutation($input: SettleHoldInput!) {
  settleHold(input: $input) {
    __typename
    ... on CreditChange {
      replayed
      event { id kind amount balanceAfter }
      user { credits { available held holds { id } } }
    }
    ... on Error { code message }
    ... on HoldNotActive { status }
    ... on InvalidInput { field }
  }
}"""
RELEASE = """
mutation($input: ReleaseHoldInput!) {
  releaseHold(input: $input) {
    __typename
    ... on CreditHold { id status }
    ... on Error { code }
    ... on HoldNotActive { status }
  }
}"""
BALANCE = """
query($id: ID!) {
  user(id: $id) { credits { available held holds { id amount status settledAmount } } }
}"""


async def reserve(gql: GraphQLClient, key: str, **fields: Any) -> dict[str, Any]:
    body = await gql(RESERVE, {"input": fields}, token=key)
    return data_of(body)["reserveCredits"]


async def balance(gql: GraphQLClient, key: str, user_id: int) -> dict[str, Any]:
    body = await gql(BALANCE, {"id": str(user_id)}, token=key)
    return data_of(body)["user"]["credits"]


async def test_the_ai_call_recipe_reserve_stream_settle(
    gql: GraphQLClient, runtime: Runtime, make_key
) -> None:
    service = await make_key("service")
    user = await make_user(runtime, credits_granted=50)
    hold = await reserve(
        gql,
        service,
        userId=str(user.id),
        amount=20,
        reason="chat call-7",
        idempotencyKey="call-7:reserve",
    )
    assert hold["__typename"] == "CreditHold", hold
    assert (hold["amount"], hold["status"], hold["settledAmount"]) == (20, "ACTIVE", None)
    assert hold["user"] == {"id": str(user.id)}
    assert await balance(gql, service, user.id) == {
        "available": 30,
        "held": 20,
        "holds": [{"id": hold["id"], "amount": 20, "status": "ACTIVE", "settledAmount": None}],
    }
    # A retry of the reserve (the caller timed out) answers the same hold.
    again = await reserve(
        gql,
        service,
        userId=str(user.id),
        amount=20,
        reason="chat call-7",
        idempotencyKey="call-7:reserve",
    )
    assert again["id"] == hold["id"]

    settle = {"holdId": hold["id"], "amount": 13, "idempotencyKey": "call-7:settle"}
    body = data_of(await gql(SETTLE, {"input": settle}, token=service))["settleHold"]
    assert body["__typename"] == "CreditChange", body
    assert body["event"]["kind"] == "settle"
    assert (body["event"]["amount"], body["event"]["balanceAfter"]) == (-13, 37)
    assert body["user"]["credits"] == {"available": 37, "held": 0, "holds": []}
    retry = data_of(await gql(SETTLE, {"input": settle}, token=service))["settleHold"]
    assert (retry["replayed"], retry["event"]["id"]) == (True, body["event"]["id"])

    late = {"holdId": hold["id"], "amount": 1}
    refused = data_of(await gql(SETTLE, {"input": late}, token=service))["settleHold"]
    assert (refused["__typename"], refused["status"]) == ("HoldNotActive", "SETTLED")


async def test_settling_more_than_held_or_a_run_out_hold_is_a_typed_error(
    gql: GraphQLClient, runtime: Runtime, make_key
) -> None:
    service = await make_key("service")
    user = await make_user(runtime, calendar_allowances=False, credits_granted=10)
    hold = await reserve(gql, service, userId=str(user.id), amount=5, reason="x", ttlSeconds=30)
    body = await gql(SETTLE, {"input": {"holdId": hold["id"], "amount": 6}}, token=service)
    assert data_of(body)["settleHold"]["field"] == "amount"
    runtime.clock.advance(seconds=31)
    body = await gql(SETTLE, {"input": {"holdId": hold["id"], "amount": 1}}, token=service)
    assert data_of(body)["settleHold"]["code"] == "HOLD_EXPIRED"
    # Nothing has run since it expired, and its credits count as available all the same.
    assert await balance(gql, service, user.id) == {"available": 10, "held": 0, "holds": []}
    body = await gql(RELEASE, {"input": {"holdId": hold["id"]}}, token=service)
    assert data_of(body)["releaseHold"] == {
        "__typename": "HoldNotActive",
        "code": "HOLD_NOT_ACTIVE",
        "status": "EXPIRED",
    }
    body = await gql(SETTLE, {"input": {"holdId": "nope", "amount": 1}}, token=service)
    assert data_of(body)["settleHold"]["code"] == "HOLD_NOT_FOUND"


async def test_release_gives_the_credits_back_and_bad_input_changes_nothing(
    gql: GraphQLClient, runtime: Runtime, make_key
) -> None:
    support = await make_key("support")
    user = await make_user(runtime, credits_granted=10)
    for fields, field in (
        ({"amount": 11}, None),
        ({"amount": 1, "ttlSeconds": 86_401}, "ttlSeconds"),
        ({"amount": -1}, "amount"),
    ):
        result = await reserve(gql, support, userId=str(user.id), reason="r", **fields)
        assert result["__typename"] in ("InsufficientCredits", "InvalidInput"), result
        assert field is None or result["field"] == field
    hold = await reserve(gql, support, email=user.email, amount=4, reason="r")
    body = await gql(RELEASE, {"input": {"holdId": hold["id"]}}, token=support)
    assert data_of(body)["releaseHold"] == {
        "__typename": "CreditHold",
        "id": hold["id"],
        "status": "RELEASED",
    }
    assert await balance(gql, support, user.id) == {"available": 10, "held": 0, "holds": []}


async def test_viewers_read_their_own_holds_only_and_cannot_reserve(
    gql: GraphQLClient, runtime: Runtime, make_key
) -> None:
    service = await make_key("service")
    alice = await make_user(runtime, credits_granted=10)
    bob = await make_user(runtime, credits_granted=10)
    await reserve(gql, service, userId=str(alice.id), amount=3, reason="alice call")
    bobs = await reserve(gql, service, userId=str(bob.id), amount=4, reason="bob call")

    mine = "{ viewer { credits { available held holds { id amount reason user { id } } } } }"
    body = data_of(await gql(mine, token=user_token(alice.id)))["viewer"]["credits"]
    assert (body["available"], body["held"]) == (7, 3)
    assert [(h["amount"], h["reason"], h["user"]["id"]) for h in body["holds"]] == [
        (3, "alice call", str(alice.id))
    ]
    assert bobs["id"] not in {h["id"] for h in body["holds"]}
    # Nor can a viewer look another user up, or hold or release credits.
    body = await gql(BALANCE, {"id": str(bob.id)}, token=user_token(alice.id))
    assert error_codes(body) == ["FORBIDDEN"]
    body = await gql(
        RESERVE,
        {"input": {"amount": 1, "reason": "x", "userId": str(alice.id)}},
        token=user_token(alice.id),
    )
    assert error_codes(body) == ["FORBIDDEN"]
    body = await gql(RELEASE, {"input": {"holdId": bobs["id"]}}, token=user_token(alice.id))
    assert error_codes(body) == ["FORBIDDEN"]
    assert (await balance(gql, service, bob.id))["held"] == 4


async def test_credits_at_a_past_moment_and_events_between_times(
    gql: GraphQLClient, runtime: Runtime, make_key
) -> None:
    support = await make_key("support")
    clock = runtime.clock
    start = clock()
    user = await make_user(
        runtime,
        calendar_allowances=False,
        credits_granted=10,
        expires_at=start + timedelta(minutes=30),
    )
    clock.advance(minutes=1)
    hold = await reserve(gql, support, userId=str(user.id), amount=6, reason="r", ttlSeconds=600)
    clock.advance(minutes=1)
    await gql(SETTLE, {"input": {"holdId": hold["id"], "amount": 2}}, token=support)
    clock.advance(hours=1)  # the grant expired at +30 min; nothing has written that off

    at = """query($id: ID!, $at: DateTime) {
      user(id: $id) { credits(at: $at) { available held holds { id status } grants { remaining } } }
    }"""

    async def credits_at(moment: Any) -> dict[str, Any]:
        body = await gql(at, {"id": str(user.id), "at": moment}, token=support)
        return data_of(body)["user"]["credits"]

    before = (start - timedelta(seconds=1)).isoformat()
    assert await credits_at(before) == {"available": 0, "held": 0, "holds": [], "grants": []}
    during = (start + timedelta(seconds=90)).isoformat()
    assert await credits_at(during) == {
        "available": 4,
        "held": 6,
        "holds": [{"id": hold["id"], "status": "ACTIVE"}],
        "grants": [{"remaining": 4}],
    }
    after_settle = (start + timedelta(minutes=10)).isoformat()
    assert await credits_at(after_settle) == {
        "available": 8,
        "held": 0,
        "holds": [],
        "grants": [{"remaining": 8}],
    }
    # The grant's expiry counts from its expiresAt, though no write has recorded it.
    expired = (start + timedelta(minutes=31)).isoformat()
    assert await credits_at(expired) == {"available": 0, "held": 0, "holds": [], "grants": []}
    body = await gql(
        at, {"id": str(user.id), "at": (clock() + timedelta(hours=1)).isoformat()}, token=support
    )
    assert error_codes(body) == ["BAD_USER_INPUT"]

    events = """query($id: ID!, $since: DateTime, $until: DateTime) {
      user(id: $id) { creditEvents(since: $since, until: $until) { edges { node { kind } } } }
    }"""
    window = {
        "id": str(user.id),
        "since": (start + timedelta(seconds=30)).isoformat(),
        "until": (start + timedelta(seconds=90)).isoformat(),
    }
    body = data_of(await gql(events, window, token=support))
    assert [e["node"]["kind"] for e in body["user"]["creditEvents"]["edges"]] == ["hold"]

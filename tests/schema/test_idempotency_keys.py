"""One idempotency key space over HTTP: a key names one operation, whichever mutation used it first.

Consumption by user id takes the PostgreSQL spend function's path, so that path is held to
the same key space as the Python one.
"""

from __future__ import annotations

from typing import Any

from gateway.runtime import Runtime
from tests.factories import make_user
from tests.schema.conftest import GraphQLClient, data_of, user_token

# Each mutation that takes a key, with the fields a conflict and a success are told apart by.
MUTATIONS = {
    name: f"""
mutation ($input: {input_type}!) {{
  {name}(input: $input) {{ __typename ... on Error {{ code }} }}
}}"""
    for name, input_type in {
        "grantCredits": "GrantCreditsInput",
        "consumeCredits": "ConsumeCreditsInput",
        "setTier": "SetTierInput",
        "reserveCredits": "ReserveCreditsInput",
        "settleHold": "SettleHoldInput",
        "releaseHold": "ReleaseHoldInput",
        "recordUsage": "RecordUsageInput",
        "setEntitlementOverride": "SetEntitlementOverrideInput",
    }.items()
}
RESERVE_ID = """
mutation ($input: ReserveCreditsInput!) {
  reserveCredits(input: $input) { ... on CreditHold { id } }
}"""
STATE = """
query ($id: ID!) {
  user(id: $id) {
    tier
    credits { available held holds { id status } }
    creditEvents(first: 50) { edges { node { id } } }
    entitlements { feature hasAccess limit usage source }
  }
}"""


async def call(gql: GraphQLClient, key: str, name: str, **fields: Any) -> dict[str, Any]:
    return data_of(await gql(MUTATIONS[name], {"input": fields}, token=key))[name]


async def state(gql: GraphQLClient, key: str, user_id: int) -> dict[str, Any]:
    return data_of(await gql(STATE, {"id": str(user_id)}, token=key))["user"]


async def hold_of(gql: GraphQLClient, key: str, user_id: int, amount: int, idem: str) -> str:
    fields = {"userId": str(user_id), "amount": amount, "reason": "ai call", "idempotencyKey": idem}
    body = await gql(RESERVE_ID, {"input": fields}, token=key)
    return data_of(body)["reserveCredits"]["id"]


def every_other_change(user_id: int, hold_id: str, key: str) -> dict[str, dict[str, Any]]:
    """One call of each kind of change under `key`, each of which would change something."""
    user = {"userId": str(user_id)}
    return {
        "grantCredits": {**user, "amount": 5, "reason": "gift", "idempotencyKey": key},
        "consumeCredits": {**user, "amount": 1, "reason": "ai call", "idempotencyKey": key},
        "setTier": {**user, "tier": "pro", "reason": "upgrade", "idempotencyKey": key},
        "reserveCredits": {**user, "amount": 2, "reason": "ai call", "idempotencyKey": key},
        "settleHold": {"holdId": hold_id, "amount": 1, "idempotencyKey": key},
        "releaseHold": {"holdId": hold_id, "idempotencyKey": key},
        "recordUsage": {**user, "feature": "projects", "idempotencyKey": key},
        "setEntitlementOverride": {
            **user,
            "feature": "api_access",
            "hasAccess": True,
            "reason": "trial of the API",
            "idempotencyKey": key,
        },
    }


async def test_a_key_record_usage_used_is_refused_by_every_other_kind_of_change(
    runtime: Runtime, gql: GraphQLClient, make_key
) -> None:
    support, service = await make_key("support"), await make_key("service")
    user = await make_user(runtime, credits_granted=20)
    hold_id = await hold_of(gql, service, user.id, 3, "hold-for-usage-key-test")
    usage = {"userId": str(user.id), "feature": "pdf_exports", "idempotencyKey": "report-42"}
    assert (await call(gql, service, "recordUsage", **usage))["__typename"] == "EntitlementUsage"
    before = await state(gql, support, user.id)

    calls = every_other_change(user.id, hold_id, "report-42")
    del calls["recordUsage"]  # its own retry is the replay checked below
    answers = {name: await call(gql, support, name, **fields) for name, fields in calls.items()}

    assert answers == {
        name: {"__typename": "IdempotencyConflict", "code": "IDEMPOTENCY_CONFLICT"}
        for name in calls
    }
    assert await state(gql, support, user.id) == before
    # The first use still answers its retry.
    again = data_of(
        await gql(
            "mutation ($input: RecordUsageInput!) { recordUsage(input: $input) {"
            " ... on EntitlementUsage { replayed quantity } } }",
            {"input": usage},
            token=service,
        )
    )["recordUsage"]
    assert again == {"replayed": True, "quantity": 1}


async def test_keys_of_credit_tier_hold_and_override_changes_are_refused_by_record_usage(
    runtime: Runtime, gql: GraphQLClient, make_key
) -> None:
    support, service = await make_key("support"), await make_key("service")
    user = await make_user(runtime, credits_granted=20)
    hold_id = await hold_of(gql, service, user.id, 3, "reserve-7")
    first_uses = every_other_change(user.id, hold_id, "unused")
    del first_uses["recordUsage"], first_uses["reserveCredits"], first_uses["releaseHold"]
    for name, fields in first_uses.items():
        fields["idempotencyKey"] = f"{name}-7"
        answer = await call(gql, support, name, **fields)
        assert answer["__typename"] not in ("IdempotencyConflict", "InvalidInput"), (name, answer)
    before = await state(gql, support, user.id)

    refused = {}
    for key in ["reserve-7", *(f"{name}-7" for name in first_uses)]:
        usage = {"userId": str(user.id), "feature": "projects", "idempotencyKey": key}
        refused[key] = await call(gql, service, "recordUsage", **usage)

    assert set(refused) == {
        "reserve-7",
        "grantCredits-7",
        "consumeCredits-7",
        "setTier-7",
        "settleHold-7",
        "setEntitlementOverride-7",
    }
    assert all(a == {"__typename": "IdempotencyConflict", "code": "IDEMPOTENCY_CONFLICT"}
               for a in refused.values()), refused  # fmt: skip
    assert await state(gql, support, user.id) == before


async def test_a_key_an_override_or_a_tier_change_used_is_refused_by_a_spend(
    runtime: Runtime, gql: GraphQLClient, make_key
) -> None:
    support, service = await make_key("support"), await make_key("service")
    user = await make_user(runtime, credits_granted=20)
    ref = {"userId": str(user.id)}
    override = {**ref, "feature": "api_access", "hasAccess": False, "reason": "abuse"}
    await call(gql, support, "setEntitlementOverride", **override, idempotencyKey="ticket-1")
    await call(gql, support, "setTier", **ref, tier="pro", reason="sale", idempotencyKey="ticket-2")
    before = await state(gql, support, user.id)

    for key in ("ticket-1", "ticket-2"):
        spent = await call(
            gql, service, "consumeCredits", **ref, amount=1, reason="ai", idempotencyKey=key
        )
        assert spent == {"__typename": "IdempotencyConflict", "code": "IDEMPOTENCY_CONFLICT"}

    assert await state(gql, support, user.id) == before
    # The viewer sees the same: nothing was spent.
    shown = await gql("{ viewer { credits { available } } }", token=user_token(user.id))
    assert data_of(shown)["viewer"]["credits"]["available"] == before["credits"]["available"]

"""A write's answer shows the user's entitlements as committed: usage counted, the tier set.

The credit and tier writes answer with the locked account, which carries no usage; its
entitlements are read from the committed row. Each step runs on both executors (the compiled one
and graphql-core, byte for byte equal, the compiled one answering) and over HTTP, and each
mutation's answer must equal what a query of the same user answers right after it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from gateway.runtime import Runtime
from schema.context import Principal
from tests.factories import make_user
from tests.schema.conftest import GraphQLClient, data_of
from tests.schema.test_compiled import context_for
from tests.schema.test_compiled_writes import compiles, on_both_executors

USER = """
  tier
  entitlements { feature hasAccess limit usage remaining resetsAt source }
  pdf: entitlement(feature: "pdf_exports") { usage remaining limit }
  none: entitlement(feature: "no_such_feature") { usage }
"""
# Each write, its input type and the payload member whose user is selected.
WRITES = {
    "grantCredits": ("GrantCreditsInput", "CreditChange"),
    "consumeCredits": ("ConsumeCreditsInput", "CreditChange"),
    "setTier": ("SetTierInput", "TierUpdate"),
    "settleHold": ("SettleHoldInput", "CreditChange"),
    "recordUsage": ("RecordUsageInput", "EntitlementUsage"),
    "setEntitlementOverride": ("SetEntitlementOverrideInput", "EntitlementOverrideChange"),
}
SUPPORT = Principal(role="support", name="support-key")
QUERY = f"query One($id: ID!) {{ user(id: $id) {{ {USER} }} }}"
RESERVE = """
mutation Reserve($input: ReserveCreditsInput!) {
  reserveCredits(input: $input) { ... on CreditHold { id } }
}"""

Send = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


def document_of(name: str) -> str:
    input_type, member = WRITES[name]
    return f"""
mutation Write($input: {input_type}!) {{
  {name}(input: $input) {{ __typename ... on {member} {{ user {{ {USER} }} }} }}
}}"""


def executor_send(runtime: Runtime) -> Send:
    async def send(query: str, variables: dict[str, Any]) -> dict[str, Any]:
        context = context_for(runtime, SUPPORT)
        compiled, result = await on_both_executors(context, query, variables)
        assert result.errors is None, result.errors
        assert compiled is not None, query
        assert orjson.dumps(compiled) == orjson.dumps(result.data)
        return compiled

    return send


def http_send(gql: GraphQLClient, key: str) -> Send:
    async def send(query: str, variables: dict[str, Any]) -> dict[str, Any]:
        return data_of(await gql(query, variables, token=key))

    return send


@pytest.fixture(params=["http", "executor"])
async def send(request, gql: GraphQLClient, runtime: Runtime, make_key) -> Send:
    if request.param == "http":
        return http_send(gql, await make_key("support"))
    return executor_send(runtime)


async def test_each_write_answers_the_users_entitlements_as_committed(
    send: Send, runtime: Runtime
) -> None:
    user = await make_user(runtime, credits_granted=20, calendar_allowances=False)
    uid = str(user.id)

    async def write(name: str, fields: dict[str, Any]) -> dict[str, Any]:
        query = document_of(name)
        assert compiles(query), name
        answer = (await send(query, {"input": fields}))[name]
        assert answer["__typename"] == WRITES[name][1], answer
        # The answer is the committed state: a query of the user right after reads the same.
        queried = (await send(QUERY, {"id": uid}))["user"]
        assert answer["user"] == queried, name
        assert answer["user"]["none"] is None
        return answer["user"]

    counted = await write("recordUsage", {"userId": uid, "feature": "pdf_exports", "quantity": 2})
    assert counted["pdf"] == {"usage": 2, "remaining": 3, "limit": 5}
    granted = await write("grantCredits", {"userId": uid, "amount": 5, "reason": "gift"})
    assert granted["pdf"] == {"usage": 2, "remaining": 3, "limit": 5}
    spent = await write("consumeCredits", {"userId": uid, "amount": 3})
    assert spent["pdf"] == {"usage": 2, "remaining": 3, "limit": 5}
    assert spent["entitlements"] == counted["entitlements"]

    moved = await write("setTier", {"userId": uid, "tier": "pro", "reason": "upgrade"})
    assert moved["tier"] == "pro"
    assert moved["pdf"] == {"usage": 2, "remaining": 98, "limit": 100}
    api = next(e for e in moved["entitlements"] if e["feature"] == "api_access")
    assert (api["hasAccess"], api["source"]) == (True, "PLAN")

    overridden = await write(
        "setEntitlementOverride",
        {"userId": uid, "feature": "pdf_exports", "hasAccess": True, "limit": 4, "reason": "r"},
    )
    assert overridden["pdf"] == {"usage": 2, "remaining": 2, "limit": 4}

    held = await send(RESERVE, {"input": {"userId": uid, "amount": 2, "reason": "call"}})
    settled = await write("settleHold", {"holdId": held["reserveCredits"]["id"], "amount": 1})
    pdf = next(e for e in settled["entitlements"] if e["feature"] == "pdf_exports")
    assert (pdf["usage"], pdf["remaining"], pdf["source"]) == (2, 2, "OVERRIDE")


TWO = """
mutation Two($usage: RecordUsageInput!, $spend: ConsumeCreditsInput!, $tier: SetTierInput!) {
  before: consumeCredits(input: $spend) { ... on CreditChange { user { USER } } }
  counted: recordUsage(input: $usage) { ... on EntitlementUsage { user { USER } } }
  after: consumeCredits(input: $spend) { ... on CreditChange { user { USER } } }
  moved: setTier(input: $tier) { ... on TierUpdate { user { USER } } }
}""".replace("USER", USER)


async def test_later_writes_of_one_document_answer_the_usage_earlier_ones_counted(
    gql: GraphQLClient, runtime: Runtime, make_key
) -> None:
    # Several root fields: graphql-core runs them in turn, each answer read after its own write.
    assert not compiles(TWO)
    user = await make_user(runtime, credits_granted=20, calendar_allowances=False)
    uid = str(user.id)
    variables = {
        "usage": {"userId": uid, "feature": "pdf_exports", "quantity": 4},
        "spend": {"userId": uid, "amount": 1},
        "tier": {"userId": uid, "tier": "pro", "reason": "upgrade"},
    }
    data = data_of(await gql(TWO, variables, token=await make_key("support")))
    pdf = {key: data[key]["user"]["pdf"] for key in ("before", "counted", "after", "moved")}
    assert pdf == {
        "before": {"usage": 0, "remaining": 5, "limit": 5},
        "counted": {"usage": 4, "remaining": 1, "limit": 5},
        "after": {"usage": 4, "remaining": 1, "limit": 5},
        "moved": {"usage": 4, "remaining": 96, "limit": 100},
    }

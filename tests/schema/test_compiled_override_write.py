"""setEntitlementOverride answered compiled: every member of its result, the write made once.

As tests/schema/test_compiled_writes.py does for the credit, tier, hold and usage writes: each
step over HTTP (executor "both": the compiled answer and graphql-core's, equal byte for byte)
and on the executors themselves (the compiled one answered, not stepped aside).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from gateway.runtime import Runtime
from resolvers.models import EntitlementOverride
from schema.context import Principal
from tests.factories import make_user
from tests.schema.conftest import GraphQLClient, data_of, error_codes
from tests.schema.test_compiled import context_for
from tests.schema.test_compiled_writes import Send, apps, compiles, on_both_executors, send

__all__ = ["apps", "send"]  # fixtures, used by name


async def overrides_of(runtime: Runtime, user_id: int) -> int:
    async with runtime.db.read() as session:
        counted = await session.scalar(
            select(func.count())
            .select_from(EntitlementOverride)
            .where(EntitlementOverride.user_id == user_id)
        )
    return int(counted or 0)


async def test_set_entitlement_override_and_each_failure_member_answer_compiled(
    send: Send, runtime: Runtime
) -> None:
    user = await make_user(runtime)  # free: 5 PDF exports a month, no API access
    uid = str(user.id)
    later = (runtime.clock() + timedelta(days=3)).isoformat()

    async def expect(fields: dict[str, Any], typename: str) -> dict[str, Any]:
        answer = await send("setEntitlementOverride", {"reason": "support", **fields})
        assert answer["__typename"] == typename, answer
        return answer

    raised = {"userId": uid, "feature": "pdf_exports", "hasAccess": True, "limit": 8}
    first = await expect(
        {**raised, "expiresAt": later, "idempotencyKey": "o-1"}, "EntitlementOverrideChange"
    )
    assert first["replayed"] is False
    assert first["override"]["limit"] == 8 and first["override"]["userId"] == uid
    assert first["override"]["expiresAt"] is not None
    shown = {"limit": 8, "remaining": 8, "source": "OVERRIDE"}
    assert first["user"]["entitlement"] == shown
    assert first["entitlement"] == {
        "feature": "pdf_exports",
        "hasAccess": True,
        "usage": 0,
        "resetsAt": first["entitlement"]["resetsAt"],
        **shown,
    }
    again = await expect(
        {
            **raised,
            "email": user.email,
            "userId": None,
            "expiresAt": later,
            "idempotencyKey": "o-1",
        },
        "EntitlementOverrideChange",
    )
    assert again["replayed"] is True and again["override"] == first["override"]
    conflict = await expect({**raised, "limit": 9, "idempotencyKey": "o-1"}, "IdempotencyConflict")
    assert conflict["idempotencyKey"] == "o-1"

    revoked = await expect(
        {"userId": uid, "feature": "api_access", "hasAccess": False}, "EntitlementOverrideChange"
    )
    assert (revoked["entitlement"]["hasAccess"], revoked["override"]["limit"]) == (False, None)
    unknown = await expect({**raised, "feature": "teleport"}, "UnknownFeature")
    assert "pdf_exports" in unknown["knownFeatures"]
    await expect({**raised, "userId": "99999999"}, "UserNotFound")
    await expect({**raised, "email": "nobody@example.com", "userId": None}, "UserNotFound")
    for fields, field in (
        ({**raised, "email": user.email}, "email"),
        ({**raised, "hasAccess": False}, "limit"),
        ({**raised, "limit": -1}, "limit"),
        ({**raised, "expiresAt": runtime.clock().isoformat()}, "expiresAt"),
        ({**raised, "reason": ""}, "reason"),
    ):
        assert (await expect(fields, "InvalidInput"))["field"] == field, fields
    assert await overrides_of(runtime, user.id) == 2


PAGED = """
mutation Override($input: SetEntitlementOverrideInput!, $first: Int) {
  setEntitlementOverride(input: $input) {
    __typename
    ... on EntitlementOverrideChange {
      override { feature limit }
      user { email creditEvents(first: $first) { edges { node { kind amount } } } }
    }
  }
}"""


@pytest.mark.parametrize("executor", ["compiled", "both"])
async def test_a_fallback_after_the_override_answers_it_without_writing_again(
    apps: dict[str, GraphQLClient], runtime: Runtime, make_key, executor: str
) -> None:
    support = await make_key("support")
    user = await make_user(runtime)
    assert compiles(PAGED)
    fields = {"userId": str(user.id), "feature": "projects", "hasAccess": True, "reason": "r"}
    # `first` past the page limit is refused only once the answer reaches creditEvents: the
    # compiled run has written by then, and graphql-core answers, error and all.
    variables = {"input": {**fields, "limit": 7}, "first": 10_000}
    body = await apps[executor](PAGED, variables, token=support)
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["path"] == ["setEntitlementOverride", "user", "creditEvents"]
    assert body["data"] is None
    assert await overrides_of(runtime, user.id) == 1

    context = context_for(runtime, Principal(role="support", name="s"))
    compiled, result = await on_both_executors(context, PAGED, variables)
    assert compiled is None
    assert [e.path for e in result.errors or []] == [
        ["setEntitlementOverride", "user", "creditEvents"]
    ]
    assert context.written("setEntitlementOverride").override.limit == 7
    assert await overrides_of(runtime, user.id) == 2

    variables = {"input": {**fields, "limit": 9}, "first": 1}
    data = data_of(await apps[executor](PAGED, variables, token=support))
    assert data["setEntitlementOverride"]["override"] == {"feature": "projects", "limit": 9}
    assert await overrides_of(runtime, user.id) == 3

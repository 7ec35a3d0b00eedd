"""Feature entitlements over HTTP: what a plan entitles to, usage checked and counted, overrides."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from gateway.runtime import Runtime
from resolvers.ledger import allowances
from tests.factories import make_user
from tests.resolvers.billing_rows import update_user
from tests.schema.conftest import data_of, error_codes, user_token

ENTITLEMENTS = """
{ viewer { entitlements { feature hasAccess limit usage remaining resetsAt source } } }
"""
ONE = """
query ($feature: String!) {
  viewer {
    entitlement(feature: $feature) { feature hasAccess limit usage remaining resetsAt source }
  }
}
"""
RECORD = """
mutation ($input: RecordUsageInput!) {
  recordUsage(input: $input) {
    __typename
    ... on EntitlementUsage {
      quantity replayed
      entitlement { feature hasAccess limit usage remaining source }
    }
    ... on LimitExceeded { feature limit usage requested }
    ... on NoAccess { feature }
    ... on UnknownFeature { feature knownFeatures }
    ... on InvalidInput { field }
    ... on Error { message code }
  }
}
"""
OVERRIDE = """
mutation ($input: SetEntitlementOverrideInput!) {
  setEntitlementOverride(input: $input) {
    __typename
    ... on EntitlementOverrideChange {
      replayed
      override { id feature hasAccess limit expiresAt reason actor requestId }
      entitlement { hasAccess limit usage remaining source }
    }
    ... on InvalidInput { field }
    ... on Error { message code }
  }
}
"""
SET_TIER = """
mutation ($input: SetTierInput!) { setTier(input: $input) { __typename } }
"""


async def one(gql, user, feature: str) -> dict:
    body = await gql(ONE, {"feature": feature}, token=user_token(user.id))
    return data_of(body)["viewer"]["entitlement"]


async def record(gql, key: str, **input) -> dict:
    return data_of(await gql(RECORD, {"input": input}, token=key))["recordUsage"]


async def test_a_free_user_sees_every_feature_with_access_limits_and_reset(
    runtime: Runtime, gql
) -> None:
    user = await make_user(runtime)
    shown = data_of(await gql(ENTITLEMENTS, token=user_token(user.id)))["viewer"]["entitlements"]
    month_end = allowances.allowance_period(runtime.clock())[1].isoformat()
    assert shown == [
        {"feature": "api_access", "hasAccess": False, "limit": None, "usage": 0,
         "remaining": 0, "resetsAt": None, "source": "NONE"},
        {"feature": "projects", "hasAccess": True, "limit": 3, "usage": 0,
         "remaining": 3, "resetsAt": None, "source": "PLAN"},
        {"feature": "pdf_exports", "hasAccess": True, "limit": 5, "usage": 0,
         "remaining": 5, "resetsAt": month_end, "source": "PLAN"},
        {"feature": "shared_workspaces", "hasAccess": False, "limit": None, "usage": 0,
         "remaining": 0, "resetsAt": None, "source": "NONE"},
    ]  # fmt: skip
    assert await one(gql, user, "no_such_feature") is None


async def test_usage_is_counted_up_to_the_limit_and_never_past_it(
    runtime: Runtime, gql, make_key
) -> None:
    service = await make_key("service")
    user = await make_user(runtime)
    counted = await record(gql, service, email=user.email, feature="pdf_exports", quantity=3)
    assert counted["__typename"] == "EntitlementUsage"
    assert counted["entitlement"] == {"feature": "pdf_exports", "hasAccess": True, "limit": 5,
                                      "usage": 3, "remaining": 2, "source": "PLAN"}  # fmt: skip
    refused = await record(gql, service, email=user.email, feature="pdf_exports", quantity=3)
    assert refused == {
        "__typename": "LimitExceeded",
        "feature": "pdf_exports",
        "limit": 5,
        "usage": 3,
        "requested": 3,
        "message": "pdf_exports: 3 of 5 used, 2 left, 3 requested",
        "code": "LIMIT_EXCEEDED",
    }
    assert (await one(gql, user, "pdf_exports"))["usage"] == 3
    last = await record(gql, service, userId=str(user.id), feature="pdf_exports", quantity=2)
    assert last["entitlement"]["remaining"] == 0
    assert (await record(gql, service, email=user.email, feature="pdf_exports"))[
        "__typename"
    ] == "LimitExceeded"
    back = await record(gql, service, email=user.email, feature="pdf_exports", quantity=-7)
    # A give-back stops at zero: only what was used comes back.
    assert (back["quantity"], back["entitlement"]["usage"]) == (-5, 0)


async def test_the_same_key_counts_once_and_other_arguments_conflict(
    runtime: Runtime, gql, make_key
) -> None:
    service = await make_key("service")
    user = await make_user(runtime, credits_granted=10)
    args = {"email": user.email, "feature": "projects", "idempotencyKey": "project-created-9"}
    first = await record(gql, service, **args)
    again = await record(gql, service, **args)
    assert (first["replayed"], again["replayed"]) == (False, True)
    assert again["entitlement"]["usage"] == first["entitlement"]["usage"] == 1
    conflict = await record(gql, service, **args, quantity=2)
    assert conflict["code"] == "IDEMPOTENCY_CONFLICT"
    # One key names one operation, whichever mutation used it first.
    spent = await gql(
        "mutation ($e: String) { consumeCredits(input: {email: $e, amount: 1,"
        ' idempotencyKey: "job-1"}) { __typename } }',
        {"e": user.email},
        token=service,
    )
    assert data_of(spent)["consumeCredits"]["__typename"] == "CreditChange"
    taken = await record(gql, service, email=user.email, feature="projects", idempotencyKey="job-1")
    assert taken["code"] == "IDEMPOTENCY_CONFLICT"
    assert (await one(gql, user, "projects"))["usage"] == 1


async def test_bad_usage_reports_are_typed_errors_that_change_nothing(
    runtime: Runtime, gql, make_key
) -> None:
    service = await make_key("service")
    user = await make_user(runtime)
    no_access = await record(gql, service, email=user.email, feature="api_access")
    assert no_access["__typename"] == "NoAccess" and no_access["code"] == "NO_ACCESS"
    unknown = await record(gql, service, email=user.email, feature="teleport")
    assert unknown["knownFeatures"] == [
        "api_access",
        "projects",
        "pdf_exports",
        "shared_workspaces",
    ]
    missing = await record(gql, service, email="ghost@example.com", feature="projects")
    assert missing["code"] == "USER_NOT_FOUND"
    for bad, field in (
        ({"email": user.email, "quantity": 0}, "quantity"),
        ({"email": user.email, "quantity": 10_000_000}, "quantity"),
        ({"email": user.email, "idempotencyKey": ""}, "idempotencyKey"),
        ({"email": user.email, "idempotencyKey": "allowance:1"}, "idempotencyKey"),
        ({"email": user.email, "userId": str(user.id)}, "email"),
        ({"userId": "99999999999"}, "userId"),
    ):
        answer = await record(gql, service, feature="projects", **bad)
        assert (answer["__typename"], answer["field"]) == ("InvalidInput", field), bad
    assert (await one(gql, user, "projects"))["usage"] == 0
    viewer = await gql(RECORD, {"input": {"email": user.email, "feature": "projects"}},
                       token=user_token(user.id))  # fmt: skip
    assert error_codes(viewer) == ["FORBIDDEN"]


async def test_metered_usage_resets_at_the_calendar_month_and_counts_do_not(
    runtime: Runtime, gql, make_key, clock
) -> None:
    service = await make_key("service")
    user = await make_user(runtime, tier="pro")
    await record(gql, service, email=user.email, feature="pdf_exports", quantity=40)
    await record(gql, service, email=user.email, feature="projects", quantity=4)
    exports = await one(gql, user, "pdf_exports")
    period_end = allowances.allowance_period(clock.now)[1]
    assert (exports["usage"], exports["remaining"]) == (40, 60)
    assert exports["resetsAt"] == period_end.isoformat()

    clock.now = period_end - timedelta(seconds=1)
    assert (await one(gql, user, "pdf_exports"))["usage"] == 40
    clock.now = period_end
    exports = await one(gql, user, "pdf_exports")
    assert (exports["usage"], exports["remaining"]) == (0, 100)
    assert exports["resetsAt"] == allowances.allowance_period(period_end)[1].isoformat()
    assert (await one(gql, user, "projects"))["usage"] == 4
    counted = await record(gql, service, email=user.email, feature="pdf_exports", quantity=100)
    assert counted["entitlement"]["usage"] == 100


async def test_a_subscriber_s_metered_usage_resets_with_the_stripe_billing_period(
    runtime: Runtime, gql, make_key, clock
) -> None:
    service = await make_key("service")
    user = await make_user(runtime, tier="pro")
    # Billed from the 20th whatever today is: a period that does not follow the calendar.
    period_end = (clock.now + timedelta(days=10)).replace(microsecond=0)
    await update_user(
        runtime,
        user.id,
        stripe_subscription_id="sub_123",
        subscription_status="active",
        subscription_period_end=period_end,
    )
    await record(gql, service, email=user.email, feature="pdf_exports", quantity=30)
    assert (await one(gql, user, "pdf_exports"))["resetsAt"] == period_end.isoformat()
    clock.now = period_end
    exports = await one(gql, user, "pdf_exports")
    assert exports["usage"] == 0
    # The renewal's webhook has not come yet: the next period is a month from the last end.
    assert exports["resetsAt"] > period_end.isoformat()
    assert (await record(gql, service, email=user.email, feature="pdf_exports"))["entitlement"][
        "usage"
    ] == 1


async def test_a_tier_change_takes_effect_at_once_and_a_downgrade_deletes_nothing(
    runtime: Runtime, gql, make_key
) -> None:
    service, support = await make_key("service"), await make_key("support")
    user = await make_user(runtime)
    await record(gql, service, email=user.email, feature="projects", quantity=3)
    assert (await record(gql, service, email=user.email, feature="projects"))[
        "__typename"
    ] == "LimitExceeded"

    async def set_tier(tier: str) -> None:
        body = await gql(SET_TIER, {"input": {"email": user.email, "tier": tier, "reason": "t"}},
                         token=support)  # fmt: skip
        assert data_of(body)["setTier"]["__typename"] == "TierUpdate"

    await set_tier("pro")
    assert (await one(gql, user, "projects"))["remaining"] == 17
    assert (await one(gql, user, "api_access"))["hasAccess"] is True
    await record(gql, service, email=user.email, feature="projects", quantity=5)
    await set_tier("free")
    projects = await one(gql, user, "projects")
    assert (projects["usage"], projects["limit"], projects["remaining"]) == (8, 3, 0)
    assert (await record(gql, service, email=user.email, feature="projects"))[
        "__typename"
    ] == "LimitExceeded"
    given_back = await record(gql, service, email=user.email, feature="projects", quantity=-1)
    assert given_back["entitlement"]["usage"] == 7


async def test_support_overrides_win_over_the_plan_expire_and_are_audited(
    runtime: Runtime, gql, make_key, clock, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="entitlements.changes")
    service, support = await make_key("service"), await make_key("support")
    user = await make_user(runtime)
    until = clock.now + timedelta(days=7)
    response = await gql.post(
        OVERRIDE,
        {"input": {"email": user.email, "feature": "api_access", "hasAccess": True,
                   "limit": 2, "expiresAt": until.isoformat(), "reason": "pilot customer"}},
        token=support,
        headers={"X-Request-ID": "ticket-5150"},
    )  # fmt: skip
    changed = data_of(response.json())["setEntitlementOverride"]
    assert changed["override"]["actor"] == "key:support-key"
    assert changed["override"]["requestId"] == "ticket-5150"
    assert changed["override"]["reason"] == "pilot customer"
    assert changed["entitlement"] == {"hasAccess": True, "limit": 2, "usage": 0, "remaining": 2,
                                      "source": "OVERRIDE"}  # fmt: skip
    await record(gql, service, email=user.email, feature="api_access", quantity=2)
    assert (await record(gql, service, email=user.email, feature="api_access"))[
        "__typename"
    ] == "LimitExceeded"

    changes = data_of(
        await gql(
            '{ entitlementChanges(requestId: "ticket-5150") { __typename'
            " ... on EntitlementOverride { feature hasAccess limit reason actor userId } } }",
            token=support,
        )
    )["entitlementChanges"]
    assert changes == [{"__typename": "EntitlementOverride", "feature": "api_access",
                        "hasAccess": True, "limit": 2, "reason": "pilot customer",
                        "actor": "key:support-key", "userId": str(user.id)}]  # fmt: skip
    logged = [r.fields for r in caplog.records if r.name == "entitlements.changes"]
    overrides = [f for f in logged if f["action"] == "entitlement_override_set"]
    assert [(f["request_id"], f["feature"], f["actor"]) for f in overrides] == [
        ("ticket-5150", "api_access", "key:support-key")
    ]

    clock.now = until
    assert (await one(gql, user, "api_access"))["source"] == "NONE"

    revoke = {"email": user.email, "feature": "projects", "hasAccess": False, "reason": "abuse"}
    revoked = data_of(await gql(OVERRIDE, {"input": revoke}, token=support))
    assert revoked["setEntitlementOverride"]["entitlement"]["remaining"] == 0
    assert (await record(gql, service, email=user.email, feature="projects"))[
        "__typename"
    ] == "NoAccess"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hasAccess": False, "limit": 3}, "limit"),
        ({"hasAccess": True, "limit": -1}, "limit"),
        ({"hasAccess": True, "reason": " "}, "reason"),
        ({"hasAccess": True, "expiresAt": "2000-01-01T00:00:00Z"}, "expiresAt"),
    ],
)
async def test_bad_overrides_are_typed_errors_that_change_nothing(
    runtime: Runtime, gql, make_key, change, field
) -> None:
    support = await make_key("support")
    user = await make_user(runtime)
    override = {"email": user.email, "feature": "projects", "reason": "r", **change}
    answer = data_of(await gql(OVERRIDE, {"input": override}, token=support))
    assert answer["setEntitlementOverride"]["field"] == field
    assert (await one(gql, user, "projects"))["source"] == "PLAN"
    service = await make_key("service", "service-key")
    refused = await gql(OVERRIDE, {"input": override}, token=service)
    assert error_codes(refused) == ["FORBIDDEN"]


CARDS = """
query ($locale: String) {
  pricing(locale: $locale) { tiers { code entitlements { feature text limit per } } }
}
"""


@pytest.mark.parametrize(
    ("locale", "pro_lines"),
    [
        ("en", ["API access", "20 projects", "100 PDF exports per month"]),
        ("nl", ["API-toegang", "20 projecten", "100 PDF-exports per maand"]),
        ("de", ["API-Zugang", "20 Projekte", "100 PDF-Exporte pro Monat"]),
    ],
)
async def test_tier_cards_carry_their_entitlements_as_localized_lines(
    gql, locale: str, pro_lines: list[str]
) -> None:
    tiers = data_of(await gql(CARDS, {"locale": locale}))["pricing"]["tiers"]
    cards = {card["code"]: card["entitlements"] for card in tiers}
    assert [line["text"] for line in cards["pro"]] == pro_lines
    assert cards["pro"][2] == {"feature": "pdf_exports", "text": pro_lines[2], "limit": 100,
                               "per": "month"}  # fmt: skip
    # The free tier lists only what it includes; numbers are formatted for the locale.
    assert [line["feature"] for line in cards["free"]] == ["projects", "pdf_exports"]
    team_exports = next(line for line in cards["team"] if line["feature"] == "pdf_exports")
    assert team_exports["text"].startswith({"en": "1,000", "nl": "1.000", "de": "1.000"}[locale])

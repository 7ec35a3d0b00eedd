"""Runbook sections 3, 5 and 6 over HTTP: pricing and credit surfaces, the premium overlay,
CRO events, metrics, diagnose, and the dashboards' saved queries."""

from __future__ import annotations

import json
from datetime import timedelta

from resolvers.ledger import credits
from resolvers.ledger.entries import Actor
from resolvers.users import UserRef
from tests.conftest import StatementCounter
from tests.factories import make_user
from tests.resolvers.billing_rows import add_payment, add_signature_failures, update_user
from tests.schema.conftest import data_of, error_codes, user_token

PRICING = """
query ($locale: String) {
  pricing(locale: $locale) {
    locale currency
    tiers { code name price isCurrent cta { kind label url } upgradeUrl }
    creditPacks { code name price cta { kind label url } buyCreditsUrl }
    sidebarCta { kind label url }
  }
}
"""
TRACK = """
mutation ($input: TrackEventInput!) {
  trackEvent(input: $input) {
    __typename
    ... on TrackedEvent { recorded event { name sessionId userId } }
    ... on InvalidInput { field message }
  }
}
"""


async def test_pricing_cards_and_ctas_follow_the_viewers_entitlements(runtime, gql) -> None:
    user = await make_user(runtime)
    page = data_of(await gql(PRICING, {"locale": "nl"}, token=user_token(user.id)))["pricing"]
    assert page["locale"] == "nl" and page["currency"] == "EUR"
    cards = {t["code"]: t for t in page["tiers"]}
    assert cards["free"]["isCurrent"] and cards["free"]["cta"]["kind"] == "CURRENT"
    assert cards["pro"]["cta"]["kind"] == "UPGRADE"
    assert cards["pro"]["upgradeUrl"] == "http://localhost:5173/billing/upgrade?tier=pro"
    assert cards["pro"]["price"].replace("\xa0", " ") == "€ 19,00"
    pack = page["creditPacks"][0]
    assert pack["cta"]["label"] == "Koop AI-credits"
    assert pack["buyCreditsUrl"] == "http://localhost:5173/billing/credits?pack=credits_100"
    assert page["sidebarCta"]["kind"] == "UPGRADE" and page["sidebarCta"]["url"]


async def test_anonymous_pricing_signs_up_and_follows_accept_language(gql) -> None:
    response = await gql.http.post(
        "/graphql", json={"query": PRICING}, headers={"Accept-Language": "de-DE,de;q=0.9"}
    )
    page = data_of(response.json())["pricing"]
    assert page["locale"].startswith("de")
    assert {t["cta"]["kind"] for t in page["tiers"]} == {"SIGNUP"}
    assert page["creditPacks"][0]["buyCreditsUrl"] is None
    english = data_of(await gql(PRICING))["pricing"]
    assert english["locale"] == "en"
    assert english["creditPacks"][0]["cta"] == {
        "kind": "SIGNUP", "label": "Sign up", "url": "http://localhost:5173/signup?pack=credits_100",
    }  # fmt: skip


async def test_premium_overlay_once_per_session(runtime, gql, make_key) -> None:
    user = await make_user(runtime)
    token = user_token(user.id)
    overlay = '{ viewer { premiumOverlay(sessionId: "s-1") { eligible shown shouldShow } } }'
    before = data_of(await gql(overlay, token=token))["viewer"]["premiumOverlay"]
    assert before == {"eligible": True, "shown": False, "shouldShow": True}
    impression = {"name": "premium_overlay_impression", "sessionId": "s-1"}
    first = data_of(await gql(TRACK, {"input": impression}, token=token))["trackEvent"]
    assert first["recorded"] is True and first["event"]["userId"] == str(user.id)
    second = data_of(await gql(TRACK, {"input": impression}, token=token))["trackEvent"]
    assert second["recorded"] is False
    after = data_of(await gql(overlay, token=token))["viewer"]["premiumOverlay"]
    assert after == {"eligible": True, "shown": True, "shouldShow": False}
    pro = await make_user(runtime, tier="pro")
    assert (
        data_of(await gql(overlay, token=user_token(pro.id)))["viewer"]["premiumOverlay"][
            "eligible"
        ]
        is False
    )


async def test_track_event_refuses_unknown_names_and_big_properties(runtime, gql) -> None:
    token = user_token((await make_user(runtime)).id)
    unknown = data_of(await gql(TRACK, {"input": {"name": "made_up"}}, token=token))
    assert unknown["trackEvent"]["field"] == "name"
    big = {"name": "cta_upgrade_click", "properties": {"blob": "x" * 5000}}
    assert data_of(await gql(TRACK, {"input": big}, token=token))["trackEvent"]["field"] == (
        "properties"
    )
    anonymous = await gql(TRACK, {"input": {"name": "cta_upgrade_click"}})
    assert error_codes(anonymous) == ["UNAUTHENTICATED"]


async def test_cro_quick_check_reads_the_latest_events(runtime, gql, make_key) -> None:
    token = user_token((await make_user(runtime)).id)
    for i in range(3):
        runtime.clock.advance(minutes=1)
        await gql(TRACK, {"input": {"name": "cta_upgrade_click", "sessionId": f"s{i}",
                                    "properties": {"place": "sidebar"}}}, token=token)  # fmt: skip
    support = await make_key("support")
    events = data_of(await gql("{ analyticsEvents(last: 2) { name sessionId properties } }",
                               token=support))["analyticsEvents"]  # fmt: skip
    assert events == [
        {"name": "cta_upgrade_click", "sessionId": "s2", "properties": {"place": "sidebar"}},
        {"name": "cta_upgrade_click", "sessionId": "s1", "properties": {"place": "sidebar"}},
    ]


async def test_metrics_over_graphql_in_three_statements(runtime, gql, make_key, db) -> None:
    support = await make_key("support")
    await make_user(runtime, tier="pro")
    await make_user(runtime)
    await gql("{ plans { code } }", token=support)  # the key lookup is cached after this
    counter = StatementCounter(db)
    try:
        body = await gql(
            "{ metrics(days: 7) { users { total plans { tier count } } "
            "payments { count } credits { granted } } }",
            token=support,
        )
    finally:
        counter.close()
    metrics = data_of(body)["metrics"]
    assert metrics["users"]["total"] == 2
    assert {p["tier"]: p["count"] for p in metrics["users"]["plans"]} == {
        "free": 1, "pro": 1, "team": 0,
    }  # fmt: skip
    assert counter.count <= 3
    bad = await gql("{ metrics(days: 0) { days } }", token=support)
    assert error_codes(bad) == ["BAD_USER_INPUT"]


async def test_diagnose_reports_escalation_criteria(runtime, gql, make_key) -> None:
    support = await make_key("support")
    user = await make_user(runtime, tier="pro")
    await add_payment(runtime, user, status="paid")
    await add_signature_failures(runtime, 3, received_at=runtime.clock() - timedelta(minutes=5))
    body = await gql(
        "query ($e: String!) { diagnose(email: $e) { isHealthy "
        "findings { code severity escalation evidence } } }",
        {"e": user.email},
        token=support,
    )
    diagnosis = data_of(body)["diagnose"]
    assert diagnosis["isHealthy"] is False
    found = {f["code"]: f for f in diagnosis["findings"]}
    assert "repeated_signature_failures" in found
    assert found["repeated_signature_failures"]["escalation"] == "Stripe support"
    # A pro tier with no Stripe customer, and money taken that granted nothing.
    assert {"missing_stripe_customer", "payment_without_grant"} <= set(found)
    assert found["payment_without_grant"]["escalation"].startswith("Backend engineering")
    viewer = await gql('{ diagnose(email: "x@y.z") { isHealthy } }', token=user_token(user.id))
    assert error_codes(viewer) == ["FORBIDDEN"]


async def test_dashboards_run_saved_queries_only_and_get_cacheable_gets(gql, make_key) -> None:
    dashboard = await make_key("dashboard")
    headers = {"Authorization": f"Bearer {dashboard}"}
    response = await gql.http.get(
        "/graphql", params={"id": "metrics_overview", "variables": json.dumps({"days": 30})},
        headers=headers,
    )  # fmt: skip
    assert response.status_code == 200
    assert data_of(response.json())["metrics"]["days"] == 30
    assert response.headers["cache-control"] == "private, max-age=30"
    posted = await gql.http.post("/graphql", json={"id": "cro_events"}, headers=headers)
    assert data_of(posted.json())["analyticsEvents"] == []
    direct = await gql.http.post(
        "/graphql", json={"query": "{ metrics { days } }"}, headers=headers
    )
    assert error_codes(direct.json()) == ["FORBIDDEN"]
    missing = await gql.http.post("/graphql", json={"id": "nope"}, headers=headers)
    assert missing.status_code == 404
    viewer_mutation = await gql.http.post(
        "/graphql", json={"id": "metrics_overview"}, headers={"Authorization": "Bearer x.y.z"}
    )
    assert error_codes(viewer_mutation.json()) == ["UNAUTHENTICATED"]


DIAGNOSE = """
query ($e: String!) { diagnose(email: $e) { findings { code severity escalation evidence } } }
"""


async def test_diagnose_names_each_escalation_criterion_over_http(runtime, gql, make_key) -> None:
    """Runbook section 5, one broken account per criterion."""
    support = await make_key("support")

    async def codes_for(email: str) -> dict[str, dict]:
        body = await gql(DIAGNOSE, {"e": email}, token=support)
        return {f["code"]: f for f in data_of(body)["diagnose"]["findings"]}

    # Correlation id missing: a change written without an X-Request-ID.
    untraced = await make_user(runtime)
    await runtime.db.write(
        lambda s: credits.grant_ai_credits(
            s, user=UserRef(user_id=untraced.id), amount=5, reason="batch", now=runtime.clock(),
            actor=Actor(name="cron", source="system", request_id=None),
        )
    )  # fmt: skip
    assert (await codes_for(untraced.email))["missing_correlation_id"]["escalation"] == (
        "notify DevOps"
    )

    # Stripe reports a payment but no entitlement_change was ever written for it.
    unpaid = await make_user(runtime)
    await add_payment(runtime, unpaid, kind="credit_pack", amount=500, credits_granted=100)
    found = await codes_for(unpaid.email)
    assert found["payment_without_entitlement_change"]["escalation"] == "Billing engineering"

    # Balance stuck: the row disagrees with the ledger.
    stuck = await make_user(runtime, credits_granted=10)
    await update_user(runtime, stuck.id, credits_available=999)
    assert (await codes_for(stuck.email))["balance_mismatch"]["escalation"] == (
        "Data platform team"
    )


async def test_support_records_a_missed_purchase_event_for_the_customer(
    runtime, gql, make_key
) -> None:
    support = await make_key("support")
    user = await make_user(runtime)
    event = {"name": "credit_purchase_completed", "email": user.email,
             "properties": {"pack": "credits_100", "ticket": "T-1"}}  # fmt: skip
    recorded = data_of(await gql(TRACK, {"input": event}, token=support))["trackEvent"]
    assert recorded["recorded"] is True and recorded["event"]["userId"] == str(user.id)
    ghost = data_of(
        await gql(TRACK, {"input": {**event, "email": "ghost@example.com"}}, token=support)
    )["trackEvent"]
    assert ghost["__typename"] == "UserNotFound"
    other = await make_user(runtime)
    meddling = data_of(
        await gql(TRACK, {"input": {**event, "email": other.email}}, token=user_token(user.id))
    )["trackEvent"]
    assert meddling["field"] == "email"

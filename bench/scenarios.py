"""The benchmarked requests, as each target (gateway, baseline, PostGraphile) receives them."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import stripe

from bench.seed import EMAIL_DOMAIN
from bench.spec import RequestSpec
from resolvers.ledger.allowances import allowance_period

GATEWAY, BASELINE, POSTGRAPHILE = "gateway", "baseline", "postgraphile"
PGBENCH = "pgbench"  # not a server: pgbench's ceiling for a spend's SQL (bench/pgbench.py)
# The viewer read's other references (PostgreSQL): PostGraphile looking the user up by email
# (the unique index, as support's `user(email:)`), and plain Strawberry on asyncpg.
POSTGRAPHILE_EMAIL, STRAWBERRY = "postgraphile-email", "strawberry"
TARGETS = (GATEWAY, BASELINE, POSTGRAPHILE, POSTGRAPHILE_EMAIL, STRAWBERRY)
RESERVE_SETTLE = "reserve-settle"
SCENARIOS = (
    "viewer",
    "consume",
    "support",
    "metrics",
    "webhook",
    "entitlement",
    "usage",
    RESERVE_SETTLE,
)
READS = ("viewer", "support", "metrics")  # the bar: >= 50% of the baseline
WRITES = ("consume",)  # >= 25%
# Gateway-only scenarios, held to a share of another gateway scenario's req/s (issue 16): the
# entitlement check to the viewer read, recordUsage to consumeCredits.
RELATIVE = {"entitlement": ("viewer", 0.9), "usage": ("consume", 0.9)}
# Gateway-only scenarios quoted as a share of another's req/s, with no bar (issue 15): a
# reserve-and-settle pair (two requests) against one consumeCredits, each one metered AI call.
COMPARED = {RESERVE_SETTLE: "consume"}

VIEWER_QUERY = "query Viewer { viewer { tier credits { available } } }"
CONSUME_MUTATION = (
    "mutation Consume($input: ConsumeCreditsInput!) { consumeCredits(input: $input) {"
    " __typename ... on CreditChange { replayed event { amount balanceAfter } }"
    " ... on Error { message code } } }"
)
SUPPORT_QUERY = (
    "query Support { users(first: 100) { edges { node { email credits { available }"
    " creditEvents(first: 5) { edges { node { amount } } }"
    " payments(first: 3) { edges { node { amount } } } } } } }"
)
ENTITLEMENT_QUERY = (
    'query Entitlement { viewer { entitlement(feature: "pdf_exports") { hasAccess remaining } } }'
)
# PDF exports: every tier has them with a monthly limit (5 on free). Each user's requests
# alternate +1 and -1 (`__STEP__`): a run sends a user more than 5 requests often enough that
# counting only up would measure LimitExceeded refusals; giving one back is a count through
# the same statements.
USAGE_MUTATION = (
    "mutation Usage($input: RecordUsageInput!) { recordUsage(input: $input) {"
    " __typename ... on EntitlementUsage { replayed entitlement { usage remaining } }"
    " ... on Error { message code } } }"
)
# An AI call metered in two steps: reserve an estimate (2), settle the actual cost (1); the
# unsettled credit goes back to the grants it came from.
RESERVE_MUTATION = (
    "mutation Reserve($input: ReserveCreditsInput!) { reserveCredits(input: $input) {"
    " __typename ... on CreditHold { id amount status } ... on Error { message code } } }"
)
SETTLE_MUTATION = (
    "mutation Settle($input: SettleHoldInput!) { settleHold(input: $input) {"
    " __typename ... on CreditChange { replayed event { amount balanceAfter } }"
    " ... on Error { message code } } }"
)
RESERVED, SETTLED = 2, 1
POSTGRAPHILE_QUERY = "query Viewer($id: Int!) { userById(id: $id) { tier creditsAvailable } }"
# The same spend through PostGraphile: its mutation for the gateway's own spend_credits function
# (migration 0002), so both sides run the one SQL statement and differ only in what is around it.
POSTGRAPHILE_SPEND = (
    "mutation Spend($uid: Int!, $key: String!, $now: Datetime!, $period: Datetime!) {"
    ' spendCredits(input: {pUserId: $uid, pAmount: 1, pReason: "ai usage", pSource: "usage",'
    ' pActor: "postgraphile", pKey: $key, pNow: $now, pPeriodStart: $period})'
    " { results { oOutcome uCreditsAvailable } } }"
)
POSTGRAPHILE_EMAIL_QUERY = (
    "query Viewer($email: String!) { userByEmail(email: $email) { tier creditsAvailable } }"
)
STRAWBERRY_QUERY = "query Viewer($id: Int!) { user(id: $id) { tier credits { available } } }"
INTROSPECTION = """
query Fields {
  __schema {
    queryType { name }
    types {
      name kind
      fields {
        name
        args { name defaultValue type { kind } }
        type { kind name ofType { kind name ofType { kind name ofType { kind name } } } }
      }
    }
  }
}
"""
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Credentials:
    users: int
    tokens_file: Path
    service_key: str
    support_key: str
    webhook_secret: str


def _graphql(query: str, variables: dict[str, Any] | None = None) -> str:
    return json.dumps({"query": query, "variables": variables} if variables else {"query": query})


def spec_for(
    scenario: str, target: str, creds: Credentials, metrics_query: str | None = None
) -> RequestSpec | None:
    """What `target` is sent for `scenario`; None where the target has nothing to compare."""
    graphql = {"method": "POST", "path": "/graphql", "users": creds.users}
    service = {**JSON, "Authorization": f"Bearer {creds.service_key}"}
    support = {**JSON, "Authorization": f"Bearer {creds.support_key}"}
    if scenario == "viewer":
        if target == GATEWAY:
            # A random user per request, each with their own end-user JWT.
            return RequestSpec(
                **graphql,
                headers={**JSON, "Authorization": "Bearer __TOKEN__"},
                body=_graphql(VIEWER_QUERY),
                tokens_file=str(creds.tokens_file),
                expect='"available"',
            )
        if target == POSTGRAPHILE:
            body = _graphql(POSTGRAPHILE_QUERY, {"id": 0}).replace('"id": 0', '"id": __UID__')
            return RequestSpec(**graphql, headers=JSON, body=body, expect='"creditsAvailable"')
        if target == POSTGRAPHILE_EMAIL:
            body = _graphql(POSTGRAPHILE_EMAIL_QUERY, {"email": f"user__UID__@{EMAIL_DOMAIN}"})
            return RequestSpec(**graphql, headers=JSON, body=body, expect='"creditsAvailable"')
        if target == STRAWBERRY:
            body = _graphql(STRAWBERRY_QUERY, {"id": 0}).replace('"id": 0', '"id": __UID__')
            return RequestSpec(**graphql, headers=JSON, body=body, expect='"available"')
        return _baseline("/viewer", '{"userId": __UID__}', creds, '"available"')
    if target == POSTGRAPHILE and scenario == "consume":
        now = datetime.now(UTC)
        variables = {
            "uid": 0,
            "key": "__KEY__",
            "now": now.isoformat(),
            "period": allowance_period(now)[0].isoformat(),
        }
        body = _graphql(POSTGRAPHILE_SPEND, variables).replace('"uid": 0', '"uid": __UID__')
        return RequestSpec(**graphql, headers=JSON, body=body, expect='"spent"')
    if target in (POSTGRAPHILE, POSTGRAPHILE_EMAIL, STRAWBERRY):
        return None
    if scenario == "entitlement":
        if target != GATEWAY:
            return None
        return RequestSpec(
            **graphql,
            headers={**JSON, "Authorization": "Bearer __TOKEN__"},
            body=_graphql(ENTITLEMENT_QUERY),
            tokens_file=str(creds.tokens_file),
            expect='"hasAccess"',
        )
    if scenario == "usage":
        if target != GATEWAY:
            return None
        variables = {
            "input": {
                "userId": "__UID__",
                "feature": "pdf_exports",
                "quantity": "__STEP__",
                "idempotencyKey": "__KEY__",
            }
        }
        body = _graphql(USAGE_MUTATION, variables).replace('"__STEP__"', "__STEP__")
        return RequestSpec(**graphql, headers=service, body=body, expect='"EntitlementUsage"')
    if scenario == RESERVE_SETTLE:
        if target != GATEWAY:
            return None
        reserve = {
            "input": {
                "userId": "__UID__",
                "amount": RESERVED,
                "reason": "ai call estimate",
                "idempotencyKey": "__KEY__",
            }
        }
        settle = {
            "input": {
                "holdId": "__CAPTURED__",
                "amount": SETTLED,
                "reason": "ai call actual cost",
                "idempotencyKey": "__KEY__-settle",
            }
        }
        return RequestSpec(
            **graphql,
            headers=service,
            body=_graphql(RESERVE_MUTATION, reserve),
            expect='"CreditHold"',
            then_body=_graphql(SETTLE_MUTATION, settle),
            then_expect='"CreditChange"',
            capture="id",
        )
    if scenario == "consume":
        if target == GATEWAY:
            variables = {
                "input": {
                    "userId": "__UID__",
                    "amount": 1,
                    "reason": "ai usage",
                    "idempotencyKey": "__KEY__",
                }
            }
            body = _graphql(CONSUME_MUTATION, variables)
            return RequestSpec(**graphql, headers=service, body=body, expect='"CreditChange"')
        body = '{"userId": __UID__, "amount": 1, "reason": "ai usage", "idempotencyKey": "__KEY__"}'
        return _baseline("/consume", body, creds, '"CreditChange"')
    if scenario == "support":
        if target == GATEWAY:
            return RequestSpec(
                **graphql, headers=support, body=_graphql(SUPPORT_QUERY), expect='"edges"'
            )
        return _baseline("/support", '{"first": 100}', creds, '"edges"')
    if scenario == "metrics":
        if metrics_query is None:
            return None
        if target == GATEWAY:
            body = _graphql(metrics_query)
            return RequestSpec(**graphql, headers=support, body=body, expect='"metrics"')
        return _baseline("/metrics", '{"days": 7}', creds, '"metrics"')
    if scenario == "webhook":
        path = "/api/billing/webhook" if target == GATEWAY else "/webhook"
        return RequestSpec(
            method="POST",
            path=path,
            headers=dict(JSON),
            users=creds.users,
            pool_header="Stripe-Signature",
        )
    raise ValueError(f"unknown scenario {scenario!r}")


def _baseline(path: str, body: str, creds: Credentials, expect: str) -> RequestSpec:
    return RequestSpec(
        method="POST", path=path, headers=dict(JSON), body=body, users=creds.users, expect=expect
    )


# --- metrics(days: 7): its selection is read from the schema, which another issue is adding ----


def metrics_query(introspection: Mapping[str, Any]) -> str | None:
    """`{ metrics(days: 7) { …every scalar field… } }`, or None if the schema has no metrics."""
    schema = introspection.get("data", {}).get("__schema")
    if not schema:
        return None
    types = {t["name"]: t for t in schema["types"]}
    query_type = types.get(schema["queryType"]["name"], {})
    field = next((f for f in query_type.get("fields") or [] if f["name"] == "metrics"), None)
    if field is None:
        return None
    selection = _selection(types, _named(field["type"]), depth=0, seen=())
    if not selection:
        return None
    has_days = any(a["name"] == "days" for a in field["args"])
    args = "(days: 7)" if has_days else ""
    return f"query Metrics {{ metrics{args} {selection} }}"


def _named(type_ref: Mapping[str, Any]) -> str:
    while type_ref.get("ofType"):
        type_ref = type_ref["ofType"]
    return type_ref["name"]


def _selection(types: Mapping[str, Any], name: str, depth: int, seen: Sequence[str]) -> str | None:
    kind = types[name]["kind"]
    if kind in ("SCALAR", "ENUM"):
        return ""
    if kind != "OBJECT" or depth > 4 or name in seen:
        return None
    parts = []
    for field in types[name]["fields"] or []:
        required = [
            a
            for a in field["args"]
            if a["type"]["kind"] == "NON_NULL" and a["defaultValue"] is None
        ]
        if required:
            continue
        sub = _selection(types, _named(field["type"]), depth + 1, (*seen, name))
        if sub is None:
            continue
        parts.append(f"{field['name']} {sub}".strip())
    return "{ " + " ".join(parts) + " }" if parts else None


# --- Stripe webhooks: signed beforehand, one distinct event and invoice per request -----------


def webhook_event(tag: str, n: int, user_id: int, price_id: str, now: int) -> dict[str, Any]:
    """An `invoice.paid` of a subscription renewal, in the shape of Stripe's API (2024+)."""
    return {
        "id": f"evt_bench_{tag}_{n}",
        "object": "event",
        "type": "invoice.paid",
        "created": now,
        "livemode": False,
        "api_version": "2024-06-20",
        "data": {
            "object": {
                "id": f"in_bench_{tag}_{n}",
                "object": "invoice",
                "customer": f"cus_seed_{user_id}",
                "customer_email": f"user{user_id}@bench.example",
                "subscription": f"sub_seed_{user_id}",
                "subscription_details": {"metadata": {"user_id": str(user_id)}},
                "status": "paid",
                "amount_paid": 1900,
                "currency": "eur",
                "payment_intent": f"pi_bench_{tag}_{n}",
                "charge": f"ch_bench_{tag}_{n}",
                "lines": {
                    "object": "list",
                    "data": [
                        {
                            "id": f"il_bench_{tag}_{n}",
                            "price": {"id": price_id},
                            "period": {"start": now, "end": now + 30 * 86_400},
                        }
                    ],
                },
            }
        },
    }


def write_webhook_pool(
    path: Path, count: int, secret: str, prices: Mapping[int, str], tag: str, seed: int = 0
) -> None:
    """`count` signed deliveries, one per line: `Stripe-Signature<TAB>body`.

    Signed now, so the run must start within Stripe's five-minute tolerance (it does: the pool
    is written right before each load run).
    """
    rng = random.Random(seed)
    subscribers = sorted(prices)
    now = int(time.time())
    with path.open("w") as out:
        for n in range(count):
            user_id = rng.choice(subscribers)
            body = json.dumps(
                webhook_event(tag, n, user_id, prices[user_id], now), separators=(",", ":")
            )
            header = stripe.WebhookSignature.generate_signature_header(body, secret, now)
            out.write(f"{header}\t{body}\n")


def signed_webhook(secret: str, prices: Mapping[int, str], tag: str, n: int) -> tuple[str, str]:
    """One signed delivery (for statement counting and probes)."""
    user_id = sorted(prices)[n % len(prices)]
    now = int(time.time())
    body = json.dumps(webhook_event(tag, n, user_id, prices[user_id], now), separators=(",", ":"))
    return stripe.WebhookSignature.generate_signature_header(body, secret, now), body

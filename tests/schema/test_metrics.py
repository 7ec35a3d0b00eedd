"""GET /metrics in one process: latency by operation, statements, pool, webhooks, process, GC."""

from __future__ import annotations

import gc
import json
from dataclasses import replace

import httpx
import stripe
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.prometheus import OperationLabels
from tests.factories import make_user
from tests.fakes import stripe_events as ev

SECRET = "whsec_test_metrics"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scrape: dict, name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


async def test_latency_statements_pool_webhook_process_and_gc_figures(runtime, make_key) -> None:
    runtime.settings = replace(runtime.settings, stripe_webhook_secrets=(SECRET,))
    support = await make_key("support")
    user = await make_user(runtime)
    auth = {"Authorization": f"Bearer {support}"}
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        before = samples((await http.get("/metrics")).text)
        named = "query SupportLookup($e: String) { user(email: $e) { credits { available } } }"
        for _ in range(3):
            answer = await http.post(
                "/graphql", json={"query": named, "variables": {"e": user.email}}, headers=auth
            )
            assert answer.json()["data"]["user"]["credits"]["available"] == 0
        await http.post("/graphql", json={"query": "{ plans { code } }"})
        body = json.dumps(
            ev.stripe_event("customer.created", {"id": "cus_m", "object": "customer"})
        )
        header = stripe.WebhookSignature.generate_signature_header(body, SECRET)
        delivered = await http.post(
            "/api/billing/webhook",
            content=body,
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        )
        assert delivered.status_code == 200
        gc.collect()
        after = samples((await http.get("/metrics")).text)

    def grew(name: str, by: float, **labels: str) -> None:
        assert value(after, name, **labels) - value(before, name, **labels) == by, (name, labels)

    seconds = "entitlements_http_request_duration_seconds"
    grew(f"{seconds}_count", 3, path="/graphql", operation="SupportLookup")
    grew(f"{seconds}_count", 1, path="/graphql", operation="anonymous")
    grew(f"{seconds}_bucket", 3, path="/graphql", operation="SupportLookup", le="+Inf")
    assert value(after, f"{seconds}_sum", path="/graphql", operation="SupportLookup") > 0
    statements = "entitlements_sql_statements_per_request"
    grew(f"{statements}_count", 4, path="/graphql")
    # The looked-up user is read with SQL on every one of the three requests.
    assert (
        value(after, f"{statements}_sum", path="/graphql")
        - value(before, f"{statements}_sum", path="/graphql")
        >= 3
    )
    webhook = "entitlements_webhook_processing_seconds_count"
    assert sum(v - before.get(k, 0.0) for k, v in after.items() if k[0] == webhook) == 1
    # Every connection went back to the pool; nobody is waiting.
    assert value(after, "entitlements_db_pool_connections_in_use") == 0
    assert value(after, "entitlements_db_pool_waiting") == 0
    names = {name for name, _ in after}
    assert {"process_resident_memory_bytes", "python_gc_collections_total"} <= names
    pauses = "entitlements_gc_pause_seconds_count"
    assert value(after, pauses, generation="2") - value(before, pauses, generation="2") >= 1


def test_operation_labels_are_bounded() -> None:
    labels = OperationLabels(reserved=["MetricsOverview"], limit=3)
    assert labels.label(None) == "anonymous"
    assert labels.label("MetricsOverview") == "MetricsOverview"
    assert labels.label("bad name\n") == "other"
    assert [labels.label(f"Op{i}") for i in range(5)] == ["Op0", "Op1", "Op2", "other", "other"]
    # A name admitted once keeps its label.
    assert labels.label("Op1") == "Op1"

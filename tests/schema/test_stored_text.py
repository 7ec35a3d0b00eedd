"""Rows that hold text the boundary now refuses (stored before it did) never break a page."""

from __future__ import annotations

import json

import httpx
from sqlalchemy import text

from gateway.runtime import Runtime
from resolvers.models import AnalyticsEvent, User
from tests.factories import make_user
from tests.schema.conftest import data_of

BAD_PROPERTIES = {"note": "a\ud800b", "nul": "c\x00d", "key\ud800": ["e\x1bf"]}
SHOWN_PROPERTIES = {"note": "a\ufffdb", "nul": "c\ufffdd", "key\ufffd": ["e\ufffdf"]}


async def plant(runtime: Runtime, backend: str) -> User:
    """A CRO event as a viewer stored it before the check (both databases keep the JSON
    escapes), and on SQLite, which stores any bytes as TEXT, a reason with a NUL and an
    invalid UTF-8 sequence (a lone surrogate's bytes)."""
    user = await make_user(runtime, credits_granted=5)
    now = runtime.clock()

    async def work(session) -> None:
        session.add(
            AnalyticsEvent(
                name="cta_upgrade_click",
                user_id=user.id,
                properties=BAD_PROPERTIES,
                request_id="req-planted",
                occurred_at=now,
            )
        )
        if backend == "sqlite":
            await session.execute(
                text(
                    "UPDATE credit_events SET reason = 'bad' || char(0) || "
                    "CAST(X'EDA080' AS TEXT) || 'reason' WHERE user_id = :id"
                ),
                {"id": user.id},
            )

    await runtime.db.write(work)
    return user


def assert_json_page(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-request-id"]
    body = json.loads(response.content.decode("utf-8"))  # strict: valid UTF-8 throughout
    assert "\x00" not in response.text and "\\u0000" not in response.text
    return data_of(body)


async def test_support_reads_cro_events_with_bad_stored_text(runtime, gql, make_key, backend):
    await plant(runtime, backend)
    support = await make_key("support")
    response = await gql.post("{ analyticsEvents { name properties } }", token=support)
    events = assert_json_page(response)["analyticsEvents"]
    assert events == [{"name": "cta_upgrade_click", "properties": SHOWN_PROPERTIES}]


async def test_the_saved_cro_events_query_reads_bad_stored_text(runtime, gql, make_key, backend):
    await plant(runtime, backend)
    dashboard = await make_key("dashboard")
    response = await gql.http.get(
        "/graphql", params={"id": "cro_events"}, headers={"Authorization": f"Bearer {dashboard}"}
    )
    events = assert_json_page(response)["analyticsEvents"]
    assert [e["properties"] for e in events] == [SHOWN_PROPERTIES]


async def test_credit_events_with_bad_stored_reasons_are_shown(runtime, gql, make_key, backend):
    user = await plant(runtime, backend)
    support = await make_key("support")
    response = await gql.post(
        "query ($e: String) { user(email: $e) { creditEvents { edges { node { reason } } } } }",
        {"e": user.email},
        token=support,
    )
    edges = assert_json_page(response)["user"]["creditEvents"]["edges"]
    expected = "bad\ufffd\ufffd\ufffd\ufffdreason" if backend == "sqlite" else "test grant"
    assert [edge["node"]["reason"] for edge in edges] == [expected]

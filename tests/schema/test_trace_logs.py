"""A W3C traceparent is honoured: every log line of that request carries the caller's trace id."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from gateway.logs import JsonFormatter
from tests.factories import make_user
from tests.schema.conftest import data_of

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
GRANT = """mutation ($e: String) { grantCredits(input: {email: $e, amount: 7, reason: "trace"})
  { ... on CreditChange { event { balanceAfter } } } }"""


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """JSON lines as the gateway writes them (formatted when logged, inside the request)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


async def test_log_lines_of_a_traced_request_carry_its_trace_id(
    runtime, gql, make_key, log_lines
) -> None:
    support = await make_key("support")
    user = await make_user(runtime)
    response = await gql.post(
        GRANT,
        {"e": user.email},
        token=support,
        headers={"traceparent": TRACEPARENT, "X-Request-ID": "traced-1"},
    )
    assert data_of(response.json())["grantCredits"]["event"]["balanceAfter"] == 7
    await gql.post("{ plans { code } }", headers={"X-Request-ID": "untraced-1"})

    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    traced = [line for line in lines if line.get("request_id") == "traced-1"]
    assert {line["event"] for line in traced} >= {"request", "entitlement_change"}
    assert all(line["trace_id"] == TRACE_ID for line in traced)
    # A request without a traceparent gets a trace of its own, not someone else's.
    untraced = {line["trace_id"] for line in lines if line.get("request_id") == "untraced-1"}
    assert len(untraced) == 1 and untraced != {TRACE_ID}
    assert re.fullmatch(r"[0-9a-f]{32}", untraced.pop())


async def test_every_line_of_an_untraced_request_names_the_same_new_trace(
    runtime, gql, make_key, log_lines
) -> None:
    """Without a traceparent the trace id is made when the first line asks for it, and kept
    for the request's other lines (the access line, the change logged after the commit)."""
    support = await make_key("support")
    user = await make_user(runtime)
    for request_id in ("own-1", "own-2"):
        response = await gql.post(
            GRANT, {"e": user.email}, token=support, headers={"X-Request-ID": request_id}
        )
        assert response.status_code == 200
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    ids = {}
    for request_id in ("own-1", "own-2"):
        mine = [line for line in lines if line.get("request_id") == request_id]
        assert {line["event"] for line in mine} >= {"request", "entitlement_change"}
        (ids[request_id],) = {line["trace_id"] for line in mine}
    assert ids["own-1"] != ids["own-2"]

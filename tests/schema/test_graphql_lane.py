"""POST /graphql through the lane (gateway.graphql.lane): what the middleware layers did for it.

Over real HTTP into the ASGI app: the request id in and out, the body limit whether announced
or streamed, bodies orjson refuses but the json module reads, one access line per request and
the request metrics, the client address the document throttle counts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.graphql.requests import parse_json
from gateway.middleware import MAX_BODY_BYTES
from gateway.prometheus import REQUESTS
from tests.factories import make_user
from tests.schema.conftest import data_of, user_token

VIEWER = "query ($big: Int) { viewer { email creditEvents(first: $big) { edges { cursor } } } }"


async def _chunks(total: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * 65_536
        sent += 65_536


async def test_a_streamed_body_past_the_limit_is_refused_with_the_request_id(gql) -> None:
    # No Content-Length: the limit holds as the body arrives.
    response = await gql.http.post(
        "/graphql",
        content=_chunks(MAX_BODY_BYTES + 65_536),
        headers={"Content-Type": "application/json", "X-Request-ID": "big-1"},
    )
    assert response.status_code == 413
    assert response.headers["x-request-id"] == "big-1"
    assert response.json() == {
        "error": f"request body over {MAX_BODY_BYTES} bytes",
        "code": "BODY_TOO_LARGE",
        "requestId": "big-1",
    }
    announced = await gql.http.post(
        "/graphql",
        content=b" " * (MAX_BODY_BYTES + 1),
        headers={"Content-Type": "application/json", "X-Request-ID": "big-2"},
    )
    assert announced.status_code == 413 and announced.json()["requestId"] == "big-2"
    assert announced.headers["x-request-id"] == "big-2"


async def test_a_streamed_body_within_the_limit_is_read_whole(gql) -> None:
    body = json.dumps({"query": "{ plans { code } }"}).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 3):
            yield body[i : i + 3]

    response = await gql.http.post(
        "/graphql", content=pieces(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert data_of(response.json())["plans"]


@pytest.mark.parametrize(
    "raw_value",
    [
        "1180591620717411303424",
        "-1180591620717411303424",
        "18446744073709551616",
        "-9223372036854775809",
        "NaN",
        "Infinity",
    ],
)
async def test_values_orjson_refuses_get_the_answer_the_json_module_gives(
    gql, runtime, raw_value
) -> None:
    """Integers past 64 bits and NaN are JSON to the json module (and to the gateway before
    orjson read its bodies): the variable is refused by GraphQL, not the body as invalid."""
    user = await make_user(runtime)
    body = f'{{"query": "{VIEWER}", "variables": {{"big": {raw_value}}}}}'.encode()
    token = user_token(user.id)
    response = await gql.http.post(
        "/graphql",
        content=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    (error,) = response.json()["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "$big" in error["message"]
    if raw_value[-1].isdigit():
        assert raw_value in error["message"]


async def test_a_body_json_cannot_read_either_is_a_400(gql) -> None:
    for body in (b'{"query": "{ plans { code } }"', b"\xff\xfe{}", b"[" * 100_000):
        response = await gql.http.post(
            "/graphql", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, body[:10]
        assert response.json()["errors"][0]["message"] == "The body is not valid JSON"


async def test_a_utf8_bom_body_is_read_as_before(gql) -> None:
    body = b"\xef\xbb\xbf" + json.dumps({"query": "{ plans { code } }"}).encode()
    response = await gql.http.post(
        "/graphql", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200 and data_of(response.json())["plans"]


async def test_one_access_line_and_one_count_per_request(gql, runtime, caplog) -> None:
    user = await make_user(runtime)
    caplog.set_level(logging.INFO, logger="gateway.access")
    counted = REQUESTS.labels(path="/graphql", status="2xx")
    before = counted._value.get()
    response = await gql.post(
        "query Mine { viewer { email } }",
        token=user_token(user.id),
        headers={"X-Request-ID": "lane-1"},
    )
    assert response.headers["x-request-id"] == "lane-1"
    assert data_of(response.json()) == {"viewer": {"email": user.email}}
    lines = [r.fields for r in caplog.records if r.name == "gateway.access"]
    assert [line["request_id"] for line in lines] == ["lane-1"]
    assert lines[0]["actor"] == f"user:{user.id}"
    assert (lines[0]["method"], lines[0]["path"], lines[0]["status"]) == ("POST", "/graphql", 200)
    assert counted._value.get() == before + 1


async def test_the_throttle_counts_the_client_the_server_names(runtime) -> None:
    """The address uvicorn puts in the scope (the forwarded one behind a trusted proxy) is the
    one whose budget of new documents is spent."""
    app = create_app(runtime)

    async def statuses(client: str, count: int, offset: int) -> list[int]:
        transport = httpx.ASGITransport(app=app, client=(client, 4711))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
            answers = []
            for n in range(offset, offset + count):
                query = f"{{ d{n}: plans {{ code }} }}"
                answers.append((await http.post("/graphql", json={"query": query})).status_code)
            return answers

    first = await statuses("198.51.100.7", 25, 0)
    assert 429 in first and first[0] == 200
    assert await statuses("198.51.100.8", 1, 100) == [200]
    assert await statuses("198.51.100.7", 1, 200) == [429]


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**80)
    | st.integers(min_value=-(2**80), max_value=-(2**62))
    | st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(value=_JSON_VALUES, ensure_ascii=st.booleans(), indent=st.none() | st.integers(0, 2))
def test_bodies_parse_as_the_json_module_parses_them(value, ensure_ascii, indent) -> None:
    body = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent).encode()
    parsed = parse_json(body)
    expected = json.loads(body)
    # Compared by their JSON text: NaN != NaN, and 1 == 1.0 would hide an int made a float.
    assert repr(parsed) == repr(expected)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
def test_bad_bodies_fail_as_the_json_module_fails(body) -> None:
    try:
        expected: object = json.loads(body)
    except (ValueError, RecursionError) as error:
        with pytest.raises(type(error)):
            parse_json(body)
        return
    assert repr(parse_json(body)) == repr(expected)


@pytest.mark.parametrize(
    "body",
    [rb'{"query": "\ud800"}', rb'{"a": "x\udfffy", "b": [1e400, -1e400]}', b'{"a": 1, "a": 2}'],
)
def test_lone_surrogates_huge_floats_and_repeated_keys_parse_as_before(body) -> None:
    assert repr(parse_json(body)) == repr(json.loads(body))


async def test_an_unexpected_failure_is_answered_500_and_logged_once(runtime, caplog) -> None:
    """The client goes away while its body is read: the lane answers as Starlette's error
    handler did, with the request id, and logs the exception once."""
    app = create_app(runtime)
    caplog.set_level(logging.INFO)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"x-request-id", b"gone-1")],
        "client": ("127.0.0.1", 5000),
        "server": ("gateway.test", 80),
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start, body = sent
    assert start["status"] == 500 and (b"x-request-id", b"gone-1") in start["headers"]
    (error,) = json.loads(body["body"])["errors"]
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": "gone-1"}
    failures = [r for r in caplog.records if r.exc_info]
    assert len(failures) == 1 and type(failures[0].exc_info[1]).__name__ == "ClientDisconnect"
    access = [r.fields for r in caplog.records if getattr(r, "fields", None)]
    assert [(a["status"], a["request_id"]) for a in access] == [(500, "gone-1")]

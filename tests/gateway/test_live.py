"""Subscriptions over real uvicorn processes: changes committed anywhere reach every process."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from gateway.listener import APPLICATION_NAME
from tests.conftest import asyncpg_dsn, unique_email
from tests.fakes.tcp_proxy import TcpProxy
from tests.gateway.gateway_process import RunningGateway, serve
from tests.gateway.live_client import (
    CREDITS,
    ENTITLEMENTS,
    close_code,
    connected,
    error_codes,
    next_data,
    nothing_within,
    open_socket,
    send,
    subscribe,
)
from tests.schema.conftest import JWT_SECRET, user_token

PUSHED_WITHIN_SECONDS = 1.0
FEATURES = ("api_access", "projects", "pdf_exports", "shared_workspaces")
GRANT = (
    "mutation ($i: GrantCreditsInput!) { grantCredits(input: $i) "
    "{ ... on CreditChange { event { id balanceAfter } } } }"
)
OVERRIDE = (
    "mutation ($i: SetEntitlementOverrideInput!) { setEntitlementOverride(input: $i) "
    "{ __typename } }"
)


def start(database_url: str, tmp_path: Path, name: str, **settings: str):
    return serve(
        database_url,
        tmp_path / f"{name}.log",
        JWT_SECRET=JWT_SECRET,
        SUBSCRIPTION_POLL_SECONDS="0.2",
        **settings,
    )


def make_user(gateway: RunningGateway) -> tuple[int, str]:
    email = unique_email("live")
    assert gateway.cli("user", "create", email).returncode == 0
    shown = gateway.cli("user", "show", email, "--json")
    return json.loads(shown.stdout)["user_id"], email


def grant(gateway: RunningGateway, key: str, email: str, amount: int) -> dict:
    response = httpx.post(
        f"{gateway.base}/graphql",
        json={
            "query": GRANT,
            "variables": {"i": {"email": email, "amount": amount, "reason": "t"}},
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    return response.json()["data"]["grantCredits"]["event"]


async def test_a_viewer_on_one_process_sees_a_grant_made_through_another(
    database_url: str, tmp_path: Path
) -> None:
    with (
        start(database_url, tmp_path, "a") as a,
        start(database_url, tmp_path, "b") as b,
    ):
        key = a.create_key("support", "live-support")
        user_id, email = make_user(a)
        socket = await connected(a.base, user_token(user_id))
        await subscribe(socket, "1", CREDITS)
        first = (await next_data(socket, "1"))["creditsChanged"]
        assert first["available"] == 50  # the free tier's allowance, due (reads never write)

        for amount in (25, 5):
            event = await asyncio.to_thread(grant, b, key, email, amount)
            committed = time.monotonic()
            pushed = (await next_data(socket, "1"))["creditsChanged"]
            assert time.monotonic() - committed <= PUSHED_WITHIN_SECONDS
            assert pushed["asOf"] == event["id"]
            assert pushed["available"] == event["balanceAfter"]
        assert pushed["available"] == 80
        await socket.close()


async def test_the_subscription_resumes_with_the_right_state_after_the_listener_is_killed(
    database_url: str, backend: str, tmp_path: Path
) -> None:
    if backend != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    with start(database_url, tmp_path, "a") as a:
        key = a.create_key("support", "live-support")
        user_id, email = make_user(a)
        socket = await connected(a.base, user_token(user_id))
        await subscribe(socket, "1", CREDITS)
        assert (await next_data(socket, "1"))["creditsChanged"]["available"] == 50

        admin = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            killed = await admin.fetchval(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = $1 AND datname = current_database()",
                APPLICATION_NAME,
            )
            assert killed
            # Committed while the process is not listening: its NOTIFY is heard by nobody.
            event = await asyncio.to_thread(grant, a, key, email, 7)
            pushed = (await next_data(socket, "1", within=10))["creditsChanged"]
            assert (pushed["available"], pushed["asOf"]) == (57, event["id"])

            # And listening again: the next change is pushed within the second.
            event = await asyncio.to_thread(grant, a, key, email, 3)
            committed = time.monotonic()
            pushed = (await next_data(socket, "1"))["creditsChanged"]
            assert time.monotonic() - committed <= PUSHED_WITHIN_SECONDS
            assert (pushed["available"], pushed["asOf"]) == (60, event["id"])
        finally:
            await admin.close()
        await socket.close()


async def test_the_subscription_resumes_with_the_right_state_after_a_database_restart(
    database_url: str, backend: str, tmp_path: Path
) -> None:
    if backend != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    # Process A reaches PostgreSQL through a proxy that goes down as a restart looks to it:
    # every connection cut (the listener's too), new ones refused, then back.
    url = make_url(database_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.start()
    through_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    try:
        with (
            start(through_proxy, tmp_path, "a") as a,
            start(database_url, tmp_path, "b") as b,
        ):
            key = b.create_key("support", "live-support")
            user_id, email = make_user(b)
            socket = await connected(a.base, user_token(user_id))
            await subscribe(socket, "1", CREDITS)
            assert (await next_data(socket, "1"))["creditsChanged"]["available"] == 50

            with proxy.down():
                # Committed while A cannot reach the database: A hears of it from nobody.
                event = await asyncio.to_thread(grant, b, key, email, 7)
                await asyncio.sleep(2)  # A's listener tries again and is refused meanwhile
            pushed = (await next_data(socket, "1", within=15))["creditsChanged"]
            assert (pushed["available"], pushed["asOf"]) == (57, event["id"])

            # Listening again: the next change, made on the other process, within the second.
            event = await asyncio.to_thread(grant, b, key, email, 3)
            committed = time.monotonic()
            pushed = (await next_data(socket, "1"))["creditsChanged"]
            assert time.monotonic() - committed <= PUSHED_WITHIN_SECONDS
            assert (pushed["available"], pushed["asOf"]) == (60, event["id"])
            await socket.close()
    finally:
        proxy.stop()


async def test_a_viewer_cannot_watch_another_user_and_staff_see_only_the_one_named(
    database_url: str, tmp_path: Path
) -> None:
    with start(database_url, tmp_path, "a") as a:
        key = a.create_key("support", "live-support")
        me, _ = make_user(a)
        other, other_email = make_user(a)
        third, third_email = make_user(a)

        viewer = await connected(a.base, user_token(me))
        await subscribe(viewer, "by-email", CREDITS, e=other_email)
        assert await error_codes(viewer, "by-email") == ["FORBIDDEN"]
        await subscribe(viewer, "by-id", ENTITLEMENTS, u=str(other))
        assert await error_codes(viewer, "by-id") == ["FORBIDDEN"]
        await subscribe(viewer, "own", CREDITS)
        assert (await next_data(viewer, "own"))["creditsChanged"]["available"] == 50

        staff = await connected(a.base, key)
        await subscribe(staff, "none", CREDITS)
        assert await error_codes(staff, "none") == ["BAD_USER_INPUT"]
        await subscribe(staff, "ghost", CREDITS, e="nobody@example.com")
        assert await error_codes(staff, "ghost") == ["BAD_USER_INPUT"]
        await subscribe(staff, "other", CREDITS, u=str(other))
        assert (await next_data(staff, "other"))["creditsChanged"]["available"] == 50

        await asyncio.to_thread(grant, a, key, third_email, 11)
        event = await asyncio.to_thread(grant, a, key, other_email, 13)
        pushed = (await next_data(staff, "other"))["creditsChanged"]
        assert (pushed["available"], pushed["asOf"]) == (63, event["id"])
        assert await nothing_within(viewer, 0.5)  # neither grant was the viewer's
        assert third != other
        await viewer.close()
        await staff.close()


async def test_staff_watch_a_users_entitlements_change(
    database_url: str, backend: str, tmp_path: Path
) -> None:
    if backend != "sqlite":
        pytest.skip("the same path as credits; backends are covered there")
    with start(database_url, tmp_path, "a") as a:
        key = a.create_key("support", "live-support")
        _, email = make_user(a)
        staff = await connected(a.base, key)
        await subscribe(staff, "1", ENTITLEMENTS, e=email)
        first = {}
        while len(first) < len(FEATURES):  # the first messages: every feature, as it is now
            value = (await next_data(staff, "1"))["entitlementChanged"]
            first[value["feature"]] = value
        assert sorted(first) == sorted(FEATURES)
        assert first["api_access"]["hasAccess"] is False
        variables = {"i": {"email": email, "feature": "api_access", "hasAccess": True}}
        variables["i"]["reason"] = "trial by support"
        answer = (
            await asyncio.to_thread(
                httpx.post,
                f"{a.base}/graphql",
                json={"query": OVERRIDE, "variables": variables},
                headers={"Authorization": f"Bearer {key}"},
            )
        ).json()
        assert answer["data"]["setEntitlementOverride"]["__typename"] == "EntitlementOverrideChange"
        pushed = (await next_data(staff, "1"))["entitlementChanged"]
        assert pushed == {
            "feature": "api_access",
            "hasAccess": True,
            "limit": None,
            "source": "OVERRIDE",
        }
        assert await nothing_within(staff, 0.3)  # the other features did not change
        await staff.close()


async def test_who_may_not_subscribe(database_url: str, backend: str, tmp_path: Path) -> None:
    if backend != "sqlite":
        pytest.skip("authentication does not depend on the backend")
    with start(database_url, tmp_path, "a") as a:
        dashboard = a.create_key("dashboard", "live-dashboard")
        user_id, _ = make_user(a)
        for payload in ({}, {"authorization": "Bearer not-a-token"}, {"authorization": 7}):
            socket = await open_socket(a.base)
            await send(socket, {"type": "connection_init", "payload": payload})
            assert await close_code(socket) == 4403
        socket = await open_socket(a.base)
        await subscribe(socket, "1", CREDITS)  # before connection_init
        assert await close_code(socket) == 4401

        socket = await connected(a.base, dashboard)
        await subscribe(socket, "1", CREDITS, u=str(user_id))
        assert await error_codes(socket, "1") == ["FORBIDDEN"]
        # Queries and mutations go over POST, with its budgets.
        await subscribe(socket, "2", "{ plans { code } }")
        assert await error_codes(socket, "2") == ["BAD_REQUEST"]
        await socket.close()

        over_post = await asyncio.to_thread(
            httpx.post,
            f"{a.base}/graphql",
            json={"query": CREDITS},
            headers={"Authorization": f"Bearer {user_token(user_id)}"},
        )
        assert over_post.status_code == 400
        assert over_post.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_subscriptions_are_bounded_per_connection_and_per_process(
    database_url: str, backend: str, tmp_path: Path
) -> None:
    if backend != "sqlite":
        pytest.skip("the limits do not depend on the backend")
    limits = {
        "SUBSCRIPTIONS_PER_CONNECTION": "2",
        "SUBSCRIPTIONS_PER_PROCESS": "3",
        "SUBSCRIPTION_IDLE_SECONDS": "1",
    }
    with start(database_url, tmp_path, "a", **limits) as a:
        user_id, _ = make_user(a)
        token = user_token(user_id)
        first = await connected(a.base, token)
        for op_id in ("1", "2"):
            await subscribe(first, op_id, CREDITS)
            await next_data(first, op_id)
        await subscribe(first, "3", CREDITS)
        assert await error_codes(first, "3") == ["SUBSCRIPTION_LIMIT"]

        second = await connected(a.base, token)
        await subscribe(second, "1", CREDITS)
        await next_data(second, "1")
        await subscribe(second, "2", CREDITS)
        assert await error_codes(second, "2") == ["SUBSCRIPTION_LIMIT"]

        # A subscription ended frees its place.
        await send(first, {"id": "1", "type": "complete"})
        await asyncio.sleep(0.2)
        await subscribe(second, "3", CREDITS)
        await next_data(second, "3")

        # Idle: a connection without a subscription is closed; one with a subscription is not.
        idle = await connected(a.base, token)
        started = time.monotonic()
        assert await close_code(idle) == 4408
        assert time.monotonic() - started < 3
        assert await nothing_within(second, 0.5)
        await subscribe(first, "4", CREDITS)  # still open: refused by the process's limit
        assert await error_codes(first, "4") == ["SUBSCRIPTION_LIMIT"]
        await first.close()
        await second.close()

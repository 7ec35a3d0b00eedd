"""CRO events: the allow-list, property limits, once-per-session impressions, overlay, CRO query."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from gateway.runtime import Runtime
from resolvers.errors import InvalidInput
from resolvers.insights import analytics
from resolvers.insights.analytics import EventTracked, PremiumOverlay
from resolvers.loaders import Loaders
from resolvers.models import AnalyticsEvent, User
from resolvers.users import UserRef
from tests.factories import make_user
from tests.resolvers.billing_rows import add_analytics_event, update_user

EXTRA_EVENTS = frozenset({"search_performed"})


async def track(
    runtime: Runtime,
    name: str,
    *,
    session_id: str | None = "sess-1",
    properties: Any = None,
    user_id: int | None = None,
) -> EventTracked | InvalidInput:
    return await runtime.db.write(
        lambda s: analytics.track_event(
            s,
            name=name,
            session_id=session_id,
            properties=properties,
            user=None if user_id is None else UserRef(user_id=user_id),
            allowed_names=EXTRA_EVENTS,
            now=runtime.clock(),
            request_id="req-cro",
        )
    )


async def event_count(runtime: Runtime, name: str | None = None) -> int:
    stmt = select(func.count()).select_from(AnalyticsEvent)
    if name is not None:
        stmt = stmt.where(AnalyticsEvent.name == name)
    async with runtime.db.read() as session:
        return (await session.execute(stmt)).scalar_one()


async def overlay(runtime: Runtime, user: User, session_id: str) -> PremiumOverlay | InvalidInput:
    async with runtime.db.read() as session:
        fresh = await session.get(User, user.id)
    return await analytics.premium_overlay(
        fresh,
        session_id=session_id,
        loaders=Loaders(runtime.db.connect),
        catalog=runtime.catalog,
        now=runtime.clock(),
    )


async def test_upgrade_click_is_recorded_every_time_with_its_context(runtime: Runtime) -> None:
    user = await make_user(runtime)
    first = await track(
        runtime,
        "cta_upgrade_click",
        properties={"tier": "pro", "placement": "sidebar"},
        user_id=user.id,
    )
    assert isinstance(first, EventTracked) and first.recorded
    event = first.event
    assert (event.name, event.session_id, event.user_id) == ("cta_upgrade_click", "sess-1", user.id)
    assert event.properties == {"tier": "pro", "placement": "sidebar"}
    assert (event.request_id, event.occurred_at) == ("req-cro", runtime.clock())
    assert event.dedupe_key is None
    second = await track(runtime, "cta_upgrade_click", properties={"tier": "team"})
    assert second.recorded and second.event.id != event.id
    assert await event_count(runtime, "cta_upgrade_click") == 2


async def test_premium_overlay_impression_is_recorded_once_per_session(runtime: Runtime) -> None:
    first = await track(runtime, "premium_overlay_impression", session_id="sess-a")
    again = await track(runtime, "premium_overlay_impression", session_id="sess-a")
    other = await track(runtime, "premium_overlay_impression", session_id="sess-b")
    assert first.recorded and first.event.dedupe_key == "premium_overlay_impression:sess-a"
    assert not again.recorded and again.event.id == first.event.id
    assert other.recorded
    assert await event_count(runtime, "premium_overlay_impression") == 2


async def test_concurrent_impressions_of_one_session_record_one_row(
    runtime: Runtime, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.db")
    async with runtime.db.read() as rival:
        # Another request inserted the impression but has not committed yet.
        rival.add(
            AnalyticsEvent(
                name="premium_overlay_impression",
                session_id="sess-race",
                properties={},
                dedupe_key=analytics.overlay_dedupe_key("sess-race"),
                occurred_at=runtime.clock(),
            )
        )
        await rival.flush()
        ours = asyncio.create_task(
            track(runtime, "premium_overlay_impression", session_id="sess-race")
        )
        await asyncio.sleep(0.5)
        # PostgreSQL: our insert waits on the unique index; SQLite: our BEGIN waits on the lock.
        assert not ours.done()
        await rival.commit()
    result = await asyncio.wait_for(ours, timeout=30)
    assert isinstance(result, EventTracked) and not result.recorded
    assert await event_count(runtime, "premium_overlay_impression") == 1
    if backend == "postgresql":
        assert "write lost a race, retrying" in caplog.text


async def test_only_cro_and_allow_listed_names_are_accepted(runtime: Runtime) -> None:
    assert (await track(runtime, "credit_purchase_completed")).recorded
    assert (await track(runtime, "search_performed")).recorded
    for name in ("page_view", "CTA_UPGRADE_CLICK", "", "x" * 500):
        refused = await track(runtime, name)
        assert isinstance(refused, InvalidInput) and refused.field == "name", name
    assert await event_count(runtime) == 2


@pytest.mark.parametrize(
    "properties",
    [
        pytest.param({"blob": "x" * 4100}, id="over-4kb"),
        pytest.param({f"k{i}": i for i in range(51)}, id="over-50-keys"),
        pytest.param({"when": object()}, id="not-json"),
        pytest.param({"ratio": float("nan")}, id="nan"),
        pytest.param({"tags": {"a", "b"}}, id="a-set"),
        pytest.param({"nested": {1: "int key"}}, id="non-string-key"),
        pytest.param(["not", "an", "object"], id="not-an-object"),
    ],
)
async def test_bad_properties_are_invalid_input_and_write_nothing(
    runtime: Runtime, properties: Any
) -> None:
    refused = await track(runtime, "cta_upgrade_click", properties=properties)
    assert isinstance(refused, InvalidInput)
    assert refused.field == "properties"
    assert await event_count(runtime) == 0


async def test_properties_at_the_limits_are_accepted(runtime: Runtime) -> None:
    fifty = {f"k{i:02d}": "v" for i in range(50)}
    assert (await track(runtime, "cta_upgrade_click", properties=fifty)).recorded
    # {"blob":"…"} is 11 bytes of JSON around the value.
    exactly_4kb = {"blob": "x" * (4096 - 11)}
    assert (await track(runtime, "cta_upgrade_click", properties=exactly_4kb)).recorded
    assert isinstance(
        await track(runtime, "cta_upgrade_click", properties={"blob": "x" * (4096 - 10)}),
        InvalidInput,
    )


async def test_impression_needs_a_session_id(runtime: Runtime) -> None:
    for session_id in (None, "", "s" * 129, "line\nbreak"):
        refused = await track(runtime, "premium_overlay_impression", session_id=session_id)
        assert isinstance(refused, InvalidInput) and refused.field == "sessionId"
    assert await event_count(runtime) == 0


async def test_overlay_is_for_free_and_trialing_users_and_shown_once_per_session(
    runtime: Runtime,
) -> None:
    free = await make_user(runtime)
    pro = await make_user(runtime, tier="pro")
    trialing = await make_user(runtime, tier="pro")
    await update_user(runtime, trialing.id, trial_ends_at=runtime.clock() + timedelta(days=3))
    trial_over = await make_user(runtime, tier="pro")
    await update_user(runtime, trial_over.id, trial_ends_at=runtime.clock() - timedelta(days=1))

    assert await overlay(runtime, free, "s-free") == PremiumOverlay(eligible=True, shown=False)
    assert await overlay(runtime, pro, "s-pro") == PremiumOverlay(eligible=False, shown=False)
    assert (await overlay(runtime, trialing, "s-trial")).eligible
    assert not (await overlay(runtime, trial_over, "s-over")).eligible

    await track(runtime, "premium_overlay_impression", session_id="s-free", user_id=free.id)
    seen = await overlay(runtime, free, "s-free")
    assert seen == PremiumOverlay(eligible=True, shown=True) and not seen.should_show
    assert (await overlay(runtime, free, "s-next-visit")).should_show
    assert isinstance(await overlay(runtime, free, ""), InvalidInput)


async def test_recent_events_answer_the_runbook_cro_query(runtime: Runtime) -> None:
    start = runtime.clock()
    for minute, name in enumerate(
        ["cta_upgrade_click", "premium_overlay_impression", "credit_purchase_completed"] * 10
    ):
        await add_analytics_event(runtime, name, occurred_at=start + timedelta(minutes=minute))

    async with runtime.db.read() as session:
        default = await analytics.recent_analytics_events(session)
        only_clicks = await analytics.recent_analytics_events(
            session, names=["cta_upgrade_click"], last=3
        )
        nothing = await analytics.recent_analytics_events(session, names=[])
        too_many = await analytics.recent_analytics_events(session, last=0)

    # 20 of the 20 runbook events, newest first, no purchases.
    assert len(default) == 20
    assert {e.name for e in default} == {"cta_upgrade_click", "premium_overlay_impression"}
    times = [e.occurred_at for e in default]
    assert times == sorted(times, reverse=True)
    assert times[0] == start + timedelta(minutes=28)
    assert [e.occurred_at for e in only_clicks] == [
        start + timedelta(minutes=m) for m in (27, 24, 21)
    ]
    assert nothing == ()
    assert isinstance(too_many, InvalidInput) and too_many.field == "last"

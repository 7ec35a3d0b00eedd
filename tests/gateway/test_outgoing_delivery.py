"""Delivering outgoing webhooks: at least once, in order per user, signed, one sender at a time."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from gateway.db import Database
from gateway.outgoing import Dispatcher
from gateway.runtime import Runtime
from gateway.settings import Settings
from resolvers.ledger import credits, tiers
from resolvers.models import OutgoingDelivery, OutgoingEvent
from resolvers.outbox.deliveries import GIVE_UP_AFTER
from resolvers.users import UserRef
from tests.factories import SUPPORT, make_user
from tests.fakes.webhook_receiver import SECRET, Receiver, run_receiver
from tests.gateway.test_cli import entitlements


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with run_receiver() as running:
        yield running


@pytest.fixture
def settings(database_url: str, receiver: Receiver) -> Settings:
    return Settings(
        database_url=database_url,
        outgoing_webhook_urls=(receiver.url,),
        outgoing_webhook_secret=SECRET,
    )


@pytest.fixture
async def dispatcher(runtime: Runtime) -> Any:
    sender = Dispatcher(runtime.db, secret=SECRET, clock=runtime.clock)
    yield sender
    await sender.close()


async def flip_tiers(runtime: Runtime, user_id: int, times: int) -> None:
    for n in range(times):
        tier = "pro" if n % 2 == 0 else "free"
        await runtime.db.write(
            lambda s, tier=tier: tiers.set_tier(
                s,
                user=UserRef(user_id=user_id),
                tier=tier,
                reason="test",
                actor=SUPPORT,
                now=runtime.clock(),
                catalog=runtime.catalog,
            )
        )


async def outbox(db: Database) -> dict[int, list[str]]:
    """Every event's webhook-id per user, in the order they happened."""
    async with db.read() as session:
        rows = await session.execute(
            select(OutgoingEvent.user_id, OutgoingEvent.message_id).order_by(OutgoingEvent.id)
        )
        per_user: dict[int, list[str]] = defaultdict(list)
        for user_id, message_id in rows:
            per_user[user_id].append(message_id)
        return dict(per_user)


async def pending(db: Database) -> int:
    async with db.read() as session:
        query = select(func.count()).where(OutgoingDelivery.status == "pending")
        return (await session.execute(query)).scalar_one()


def assert_received_once_in_order(receiver: Receiver, expected: dict[int, list[str]]) -> None:
    arrived = receiver.unique()
    for item in arrived:
        assert item.verified()["data"]["userId"] == str(item.payload["data"]["userId"])
    per_user: dict[int, list[str]] = defaultdict(list)
    for item in arrived:
        per_user[int(item.payload["data"]["userId"])].append(item.message_id)
    assert dict(per_user) == expected


async def test_a_receiver_down_at_first_gets_every_event_once_in_order_after_backoff(
    runtime: Runtime, receiver: Receiver, dispatcher: Dispatcher, clock: Any
) -> None:
    users = [await make_user(runtime, calendar_allowances=False) for _ in range(4)]
    for user in users:
        await flip_tiers(runtime, user.id, 5)
    expected = await outbox(runtime.db)
    assert sum(map(len, expected.values())) == 20

    receiver.down = True
    first = await dispatcher.dispatch()
    # Only each user's first event is tried: the others wait behind it.
    assert (first.delivered, first.failed) == (0, 4)
    again = await dispatcher.dispatch()  # not due yet: the backoff holds them
    assert (again.delivered, again.failed) == (0, 0)
    clock.advance(seconds=10)  # the first retry waits 5 to 10 s
    assert (await dispatcher.dispatch()).failed == 4
    assert receiver.refused == 8 and receiver.received == []

    receiver.down = False
    clock.advance(seconds=20)
    done = await dispatcher.dispatch()
    assert (done.delivered, done.failed) == (20, 0)
    assert await pending(runtime.db) == 0
    assert len(receiver.received) == 20
    assert_received_once_in_order(receiver, expected)


async def test_after_three_days_a_delivery_is_given_up_and_support_retries_it(
    runtime: Runtime, receiver: Receiver, dispatcher: Dispatcher, clock: Any, database_url: str
) -> None:
    user = await make_user(runtime, credits_granted=15, calendar_allowances=False)
    await runtime.db.write(
        lambda s: credits.consume_credits(
            s,
            user=UserRef(user_id=user.id),
            amount=15,
            reason="all of it",
            actor=SUPPORT,
            now=runtime.clock(),
            catalog=runtime.catalog,
        )
    )
    receiver.down = True
    start = clock.now
    while clock.now - start <= GIVE_UP_AFTER + GIVE_UP_AFTER / 10:
        await dispatcher.dispatch()
        clock.advance(hours=6)
    async with runtime.db.read() as session:
        rows = (
            (await session.execute(select(OutgoingDelivery).order_by(OutgoingDelivery.id)))
            .scalars()
            .all()
        )
    assert [r.status for r in rows] == ["failed", "failed"]  # low_balance, then depleted
    assert 8 < rows[0].attempts < 30 and rows[0].last_status == 503

    listed = await entitlements(database_url, "deliveries", "list", "--status", "failed", "--json")
    assert listed.returncode == 0, listed.stderr
    retried = await entitlements(database_url, "deliveries", "retry", str(rows[0].id), "--json")
    assert retried.returncode == 0, retried.stderr
    missing = await entitlements(database_url, "deliveries", "retry", "99999")
    assert missing.returncode == 1 and "No outgoing delivery with id 99999" in missing.stderr
    receiver.down = False
    assert (await dispatcher.dispatch()).delivered == 1
    assert [r.verified()["type"] for r in receiver.received] == ["credits.low_balance"]

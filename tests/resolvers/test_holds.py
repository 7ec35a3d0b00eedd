"""Holds: reserve takes credits out of reach, settle spends up to them, release gives them back."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from gateway.runtime import Runtime
from resolvers.errors import (
    HoldExpired,
    HoldNotActive,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidInput,
)
from resolvers.ledger import credits, holds
from resolvers.ledger.entries import Actor
from resolvers.models import CreditEvent, CreditGrant, CreditHold, User
from resolvers.users import UserRef
from tests.factories import SUPPORT, make_user

USAGE = Actor(name="ai-backend", source="usage", request_id="req-holds")


async def reserve(runtime: Runtime, user_id: int, amount: int, **kwargs: Any) -> Any:
    return await runtime.db.write(
        lambda s: holds.reserve_credits(
            s,
            user=UserRef(user_id=user_id),
            amount=amount,
            reason=kwargs.pop("reason", "completion call-1"),
            actor=USAGE,
            now=runtime.clock(),
            catalog=runtime.catalog,
            **kwargs,
        )
    )


async def settle(runtime: Runtime, hold_id: int, amount: int, **kwargs: Any) -> Any:
    return await runtime.db.write(
        lambda s: holds.settle_hold(
            s, hold_id=hold_id, amount=amount, actor=USAGE, now=runtime.clock(), **kwargs
        )
    )


async def release(runtime: Runtime, hold_id: int, **kwargs: Any) -> Any:
    return await runtime.db.write(
        lambda s: holds.release_hold(s, hold_id=hold_id, actor=USAGE, now=runtime.clock(), **kwargs)
    )


async def consume(runtime: Runtime, user_id: int, amount: int) -> Any:
    return await runtime.db.write(
        lambda s: credits.consume_credits(
            s,
            user=UserRef(user_id=user_id),
            amount=amount,
            reason="plain spend",
            actor=USAGE,
            now=runtime.clock(),
            catalog=runtime.catalog,
        )
    )


async def grant(runtime: Runtime, user_id: int, amount: int, **kwargs: Any) -> Any:
    result = await runtime.db.write(
        lambda s: credits.grant_ai_credits(
            s,
            user=UserRef(user_id=user_id),
            amount=amount,
            reason="test grant",
            actor=SUPPORT,
            now=runtime.clock(),
            **kwargs,
        )
    )
    assert isinstance(result, credits.CreditChanged), result
    return result


async def ledger_state(runtime: Runtime, user_id: int) -> dict[str, Any]:
    """The row, the grants, the holds and the ledger sum, read back from the database."""
    async with runtime.db.read() as session:
        user = await session.get(User, user_id, populate_existing=True)
        assert user is not None
        grants = (
            await session.scalars(
                select(CreditGrant).where(CreditGrant.user_id == user_id).order_by(CreditGrant.id)
            )
        ).all()
        rows = (
            await session.scalars(
                select(CreditHold).where(CreditHold.user_id == user_id).order_by(CreditHold.id)
            )
        ).all()
        events = (
            await session.scalars(
                select(CreditEvent).where(CreditEvent.user_id == user_id).order_by(CreditEvent.id)
            )
        ).all()
    return {
        "available": user.credits_available,
        "held": user.credits_held,
        "grants": [g.remaining for g in grants],
        "holds": [(h.status, h.amount, h.settled_amount) for h in rows],
        "ledger": sum(e.amount for e in events),
        "events": [(e.kind, e.amount, e.balance_after) for e in events],
    }


async def test_a_hold_takes_credits_out_of_reach_of_spends_and_other_holds(
    runtime: Runtime,
) -> None:
    user = await make_user(runtime, credits_granted=10)
    held = await reserve(runtime, user.id, 7)
    assert isinstance(held, holds.HoldChanged), held
    assert (held.hold.status, held.hold.amount) == ("active", 7)

    assert await consume(runtime, user.id, 4) == InsufficientCredits(available=3, requested=4)
    assert await reserve(runtime, user.id, 4) == InsufficientCredits(available=3, requested=4)
    state = await ledger_state(runtime, user.id)
    assert (state["available"], state["held"], state["ledger"]) == (3, 7, 10)
    assert state["events"][-1] == ("hold", 0, 10)


async def test_settle_spends_the_actual_cost_and_gives_back_the_rest(runtime: Runtime) -> None:
    user = await make_user(runtime, credits_granted=10)
    held = await reserve(runtime, user.id, 8)
    settled = await settle(runtime, held.hold.id, 5, reason="completion call-1: 5 credits")
    assert isinstance(settled, credits.CreditChanged), settled
    assert (settled.event.kind, settled.event.amount, settled.event.balance_after) == (
        "settle",
        -5,
        5,
    )
    assert settled.event.hold_id == held.hold.id
    assert settled.event.allocations == [[held.hold.allocations[0][0], 5]]
    state = await ledger_state(runtime, user.id)
    assert (state["available"], state["held"], state["ledger"]) == (5, 0, 5)
    assert state["holds"] == [("settled", 8, 5)]
    assert sum(state["grants"]) == 5


async def test_settling_nothing_or_everything_and_no_more(runtime: Runtime) -> None:
    user = await make_user(runtime, credits_granted=10)
    first = await reserve(runtime, user.id, 4)
    second = await reserve(runtime, user.id, 4)
    too_much = await settle(runtime, first.hold.id, 5)
    assert isinstance(too_much, InvalidInput) and too_much.field == "amount"
    assert isinstance(await settle(runtime, first.hold.id, -1), InvalidInput)
    assert isinstance(await settle(runtime, first.hold.id, 0), credits.CreditChanged)
    assert isinstance(await settle(runtime, second.hold.id, 4), credits.CreditChanged)
    state = await ledger_state(runtime, user.id)
    assert (state["available"], state["held"], state["ledger"]) == (6, 0, 6)


async def test_a_closed_hold_cannot_be_settled_or_released_again(runtime: Runtime) -> None:
    user = await make_user(runtime, credits_granted=10)
    held = await reserve(runtime, user.id, 4)
    assert isinstance(await release(runtime, held.hold.id), holds.HoldChanged)
    assert await settle(runtime, held.hold.id, 1) == HoldNotActive(
        hold_id=held.hold.id, status="released"
    )
    assert await release(runtime, held.hold.id) == HoldNotActive(
        hold_id=held.hold.id, status="released"
    )
    assert await settle(runtime, 999_999, 1) == HoldNotFound(hold_id="999999")
    assert await release(runtime, "not-an-id") == HoldNotFound(hold_id="not-an-id")
    state = await ledger_state(runtime, user.id)
    assert (state["available"], state["held"], state["ledger"]) == (10, 0, 10)


async def test_settle_succeeds_after_the_grants_it_came_from_expired(runtime: Runtime) -> None:
    clock = runtime.clock
    user = await make_user(runtime, credits_granted=10, expires_at=clock() + timedelta(seconds=30))
    held = await reserve(runtime, user.id, 6, ttl_seconds=120)
    clock.advance(seconds=60)
    settled = await settle(runtime, held.hold.id, 2)
    assert isinstance(settled, credits.CreditChanged), settled
    state = await ledger_state(runtime, user.id)
    # The 4 not settled went back to a grant that had expired: they are lost, with an event.
    assert (state["available"], state["held"], state["ledger"]) == (0, 0, 0)
    assert [e[0] for e in state["events"]] == ["grant", "hold", "expire", "settle", "expire"]


async def test_an_expired_hold_gives_its_credits_back_without_a_sweep(runtime: Runtime) -> None:
    user = await make_user(runtime, calendar_allowances=False, credits_granted=10)
    held = await reserve(runtime, user.id, 9, ttl_seconds=60)
    runtime.clock.advance(seconds=61)
    assert await settle(runtime, held.hold.id, 1) == HoldExpired(
        hold_id=held.hold.id, expires_at=held.hold.expires_at
    )
    assert await release(runtime, held.hold.id) == HoldNotActive(
        hold_id=held.hold.id, status="expired"
    )
    # The next write releases it first, so the spend sees all ten credits.
    spent = await consume(runtime, user.id, 10)
    assert isinstance(spent, credits.CreditChanged), spent
    state = await ledger_state(runtime, user.id)
    assert state["holds"] == [("expired", 9, None)]
    assert (state["available"], state["held"], state["ledger"]) == (0, 0, 0)
    assert [e[0] for e in state["events"]] == ["grant", "hold", "hold_expire", "consume"]


async def test_keyed_reserve_settle_and_release_answer_their_first_result(
    runtime: Runtime,
) -> None:
    user = await make_user(runtime, credits_granted=10)
    first = await reserve(runtime, user.id, 5, idempotency_key="call-1:reserve")
    again = await reserve(runtime, user.id, 5, idempotency_key="call-1:reserve")
    assert (again.replayed, again.hold.id) == (True, first.hold.id)
    assert await reserve(
        runtime, user.id, 6, idempotency_key="call-1:reserve"
    ) == IdempotencyConflict(idempotency_key="call-1:reserve")

    settled = await settle(runtime, first.hold.id, 3, idempotency_key="call-1:settle")
    retry = await settle(runtime, first.hold.id, 3, idempotency_key="call-1:settle")
    assert (retry.replayed, retry.event.id) == (True, settled.event.id)
    assert await settle(
        runtime, first.hold.id, 4, idempotency_key="call-1:settle"
    ) == IdempotencyConflict(idempotency_key="call-1:settle")

    other = await reserve(runtime, user.id, 2)
    released = await release(runtime, other.hold.id, idempotency_key="call-2:release")
    replay = await release(runtime, other.hold.id, idempotency_key="call-2:release")
    assert (replay.replayed, replay.hold.status) == (True, "released")
    assert replay.event.id == released.event.id
    state = await ledger_state(runtime, user.id)
    assert (state["available"], state["held"], state["ledger"]) == (7, 0, 7)


async def test_bad_hold_input_is_refused_and_changes_nothing(runtime: Runtime) -> None:
    user = await make_user(runtime, credits_granted=10)
    for kwargs, field in (
        ({"amount": 0}, "amount"),
        ({"amount": 1, "ttl_seconds": 0}, "ttlSeconds"),
        ({"amount": 1, "ttl_seconds": 86_401}, "ttlSeconds"),
        ({"amount": 1, "reason": " "}, "reason"),
    ):
        amount = kwargs.pop("amount")
        result = await reserve(runtime, user.id, amount, **kwargs)
        assert isinstance(result, InvalidInput) and result.field == field, result
    state = await ledger_state(runtime, user.id)
    assert (state["available"], state["held"], state["holds"]) == (10, 0, [])

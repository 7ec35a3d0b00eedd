"""One idempotency key sent by two kinds of change at once, and what such a race must leave.

A key names one operation, whichever kind of change used it first (docs/design.md): of two
different mutations racing with one key, exactly one takes effect and the other is answered
IdempotencyConflict, for one user or for two. Shared by the race through the ASGI app
(tests/schema/test_key_races.py) and the one between two gateway processes
(tests/gateway/test_key_race_processes.py).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import literal, select, union_all

from gateway.runtime import Runtime
from resolvers.models import CreditEvent, EntitlementOverride, TierChange, UsageEvent, User

# The kinds of change raced, each with the answer of its success and what it does to a user.
INPUT_TYPES = {
    "grantCredits": "GrantCreditsInput",
    "consumeCredits": "ConsumeCreditsInput",
    "reserveCredits": "ReserveCreditsInput",
    "recordUsage": "RecordUsageInput",
    "setEntitlementOverride": "SetEntitlementOverrideInput",
}
SUCCESS = {
    "grantCredits": "CreditChange",
    "consumeCredits": "CreditChange",
    "reserveCredits": "CreditHold",
    "recordUsage": "EntitlementUsage",
    "setEntitlementOverride": "EntitlementOverrideChange",
}
# The table the one effect of a key is written to, by kind of change.
TABLE = {
    "grantCredits": "credit_events",
    "consumeCredits": "credit_events",
    "reserveCredits": "credit_events",
    "recordUsage": "usage_events",
    "setEntitlementOverride": "entitlement_overrides",
}
# Spends and counts by user id are PostgreSQL's one-statement functions; by email, and grants,
# holds and overrides, the Python rule. Each pair crosses tables, paths, or both.
PAIRS = (
    ("grantCredits", "recordUsage"),
    ("consumeCredits", "reserveCredits"),
    ("consumeCredits", "grantCredits"),
    ("setEntitlementOverride", "recordUsage"),
    ("grantCredits", "setEntitlementOverride"),
    ("recordUsage by email", "consumeCredits by email"),
)
GRANT, SPEND, HOLD = 5, 1, 2
FEATURE = "pdf_exports"  # pro: 100 a month, more than a race counts
START_CREDITS = 1_000


def document(name: str) -> str:
    return (
        f"mutation ($input: {INPUT_TYPES[name]}!) {{ {name}(input: $input) {{"
        " __typename ... on Error { code } } }"
    )


def input_of(name: str, ref: dict[str, str], key: str) -> dict[str, Any]:
    ref = {**ref, "idempotencyKey": key}
    if name == "grantCredits":
        return {**ref, "amount": GRANT, "reason": "gift"}
    if name == "consumeCredits":
        return {**ref, "amount": SPEND, "reason": "ai call"}
    if name == "reserveCredits":
        return {**ref, "amount": HOLD, "reason": "ai call"}
    if name == "setEntitlementOverride":
        # Another feature than the one counted: an override of it would change its limit.
        return {**ref, "feature": "api_access", "hasAccess": True, "reason": "trial of the API"}
    assert name == "recordUsage", name
    return {**ref, "feature": FEATURE}


@dataclass(frozen=True)
class Call:
    name: str
    user_id: int
    key: str
    email: str | None = None  # set: the user is named by email, not id

    @property
    def body(self) -> dict[str, Any]:
        ref = {"email": self.email} if self.email else {"userId": str(self.user_id)}
        return {
            "query": document(self.name),
            "variables": {"input": input_of(self.name, ref, self.key)},
        }


def race_calls(users: tuple[User, User], keys_per_pair: int, tag: str) -> list[Call]:
    """For each pair of kinds, keys each sent by both kinds: half of them for one user, half
    with each kind for a user of its own. Both calls of a key are next to each other."""
    calls = []
    for first, second in PAIRS:
        for n in range(keys_per_pair):
            key = f"{tag}-{first}-{second}-{n}".replace(" ", "-")
            other = users[0] if n % 2 == 0 else users[1]
            calls += [_call(first, users[0], key), _call(second, other, key)]
    return calls


def _call(kind: str, user: User, key: str) -> Call:
    name, _, named_by = kind.partition(" by ")
    return Call(name, user.id, key, email=user.email if named_by == "email" else None)


Post = Callable[[int, dict[str, Any]], Awaitable[httpx.Response]]


async def send_all(post: Post, calls: list[Call]) -> list[dict[str, Any]]:
    """Every call at once (`post` is given the call's index and its body); their answers."""
    responses = await asyncio.gather(*(post(i, call.body) for i, call in enumerate(calls)))
    answers = []
    for call, response in zip(calls, responses, strict=True):
        # A lost race is an answer, never a 500 or a GraphQL error.
        assert response.status_code == 200, (call, response.text)
        body = response.json()
        assert "errors" not in body, (call, body)
        answers.append(body["data"][call.name])
    return answers


async def effects_of(runtime: Runtime, keys: set[str]) -> dict[str, list[tuple[str, int]]]:
    """Every row written under each key, in any table keys are stored in: (table, user)."""
    tables = {
        "credit_events": CreditEvent,
        "tier_changes": TierChange,
        "usage_events": UsageEvent,
        "entitlement_overrides": EntitlementOverride,
    }
    query = union_all(
        *(
            select(
                model.__table__.c.idempotency_key,
                model.__table__.c.user_id,
                literal(name).label("table_name"),
            ).where(model.__table__.c.idempotency_key.in_(sorted(keys)))
            for name, model in tables.items()
        )
    )
    found: dict[str, list[tuple[str, int]]] = {key: [] for key in keys}
    async with runtime.db.read() as session:
        for row in (await session.execute(query)).all():
            found[row.idempotency_key].append((row.table_name, row.user_id))
    return found


async def assert_one_effect_per_key(
    runtime: Runtime, calls: list[Call], answers: list[dict[str, Any]], users: tuple[User, User]
) -> Counter[str]:
    """Each key: one call succeeded, the other was refused as a conflict, one row was written,
    by the one that succeeded; the users' balances, holds and counts add up. Returns which
    kinds won, so a test can tell the race went both ways."""
    by_key: dict[str, list[tuple[Call, dict[str, Any]]]] = {}
    for call, answer in zip(calls, answers, strict=True):
        by_key.setdefault(call.key, []).append((call, answer))
    effects = await effects_of(runtime, set(by_key))
    won: Counter[str] = Counter()
    per_user: dict[int, Counter[str]] = {user.id: Counter() for user in users}
    wrong = {}
    for key, pair in by_key.items():
        winners = [call for call, answer in pair if answer["__typename"] == SUCCESS[call.name]]
        refused = [answer for _, answer in pair if answer["__typename"] == "IdempotencyConflict"]
        one_effect = [(TABLE[call.name], call.user_id) for call in winners]
        if len(winners) != 1 or len(refused) != 1 or effects[key] != one_effect:
            # Every key that went wrong, not just the first: which pairs and users leak.
            wrong[key] = ([(c.name, c.user_id, a) for c, a in pair], effects[key])
            continue
        assert refused[0]["code"] == "IDEMPOTENCY_CONFLICT"
        winner = winners[0]
        won[winner.name] += 1
        per_user[winner.user_id][winner.name] += 1
    assert not wrong, wrong
    async with runtime.db.read() as session:
        for user_id, kinds in per_user.items():
            user = await session.get(User, user_id)
            assert user is not None
            spent = SPEND * kinds["consumeCredits"] + HOLD * kinds["reserveCredits"]
            assert user.credits_available == START_CREDITS + GRANT * kinds["grantCredits"] - spent
            assert user.credits_held == HOLD * kinds["reserveCredits"]
            counted = (user.entitlement_usage or {}).get(FEATURE, {"used": 0})["used"]
            assert counted == kinds["recordUsage"], (user_id, counted, kinds)
    return won

"""Random result selections of the compiled writes answer as graphql-core answers them.

Each example makes one write (a spend, a grant, a tier change, a hold reserved, settled or
released; successes and every kind of failure) under a random selection of its result union:
members picked by inline or named fragments or the `Error` interface, aliases, `__typename`,
`@skip`/`@include` on variables, nested users, events, balances and connections. The compiled
executor makes the write and answers; graphql-core then answers the same document on the same
context, from that write. Where graphql-core reports errors (a role that may not write), the
compiled executor must have stepped aside; otherwise the answers must be equal byte for byte.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import orjson
import pytest
from graphql import get_named_type, is_abstract_type, is_leaf_type, parse, validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.compiled.fields import FIELDS
from gateway.runtime import Runtime
from resolvers.ledger import holds
from resolvers.users import UserRef
from schema.context import Principal
from tests.factories import SUPPORT, make_user
from tests.schema.test_compiled import Document, arguments, context_for, decorated
from tests.schema.test_compiled_writes import SCHEMA, WRITES, on_both_executors

# Fields of one name but different types on two members of a union: always aliased apart.
ALIASED = {"holdId"}
DEPTH = 3


@st.composite
def object_selection(draw: st.DrawFn, type_name: str, doc: Document, depth: int) -> str:
    graphql_type = SCHEMA.get_type(type_name)
    if is_abstract_type(graphql_type):
        return draw(union_selection(graphql_type, doc, depth))
    names = sorted(FIELDS[type_name])
    picked = draw(st.lists(st.sampled_from([*names, "__typename"]), min_size=1, max_size=4))
    parts = []
    for name in picked:
        if name == "__typename":
            parts.append(draw(decorated("__typename", doc)))
            continue
        definition = graphql_type.fields[name]
        child = get_named_type(definition.type)
        if not is_leaf_type(child) and depth <= 0:
            parts.append("__typename")
            continue
        aliased = definition.args or name in ALIASED or draw(st.booleans())
        alias = f"a{next(doc.names)}: " if aliased else ""
        text = alias + name + draw(arguments(name, doc, list(definition.args)))
        text = draw(decorated(text, doc))
        if not is_leaf_type(child):
            text += " " + draw(object_selection(child.name, doc, depth - 1))
        parts.append(text)
    return f"{{ {' '.join(parts)} }}"


@st.composite
def union_selection(draw: st.DrawFn, union: Any, doc: Document, depth: int) -> str:
    members = [m.name for m in SCHEMA.get_possible_types(union)]
    picked = draw(
        st.lists(st.sampled_from([*members, "Error", "__typename"]), min_size=1, max_size=5)
    )
    parts = []
    for name in picked:
        if name == "__typename":
            parts.append(draw(decorated("__typename", doc)))
            continue
        if name == "Error":
            body = "code message __typename"
        else:
            body = draw(object_selection(name, doc, depth))[1:-1].strip()
        if draw(st.booleans()):
            parts.append(draw(decorated(f"... on {name}", doc)) + f" {{ {body} }}")
        else:
            fragment = f"F{next(doc.names)}"
            doc.fragments.append(f"fragment {fragment} on {name} {{ {body} }}")
            parts.append(draw(decorated(f"...{fragment}", doc)))
    return f"{{ {' '.join(parts)} }}"


@st.composite
def write_document(
    draw: st.DrawFn, name: str, fields: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    input_type, union = WRITES[name]
    doc = Document()
    argument = doc.variable(f"{input_type}!", fields)
    alias = "done: " if draw(st.booleans()) else ""
    selection = draw(union_selection(SCHEMA.get_type(union), doc, DEPTH))
    return doc.text(f"{alias}{name}(input: {argument}) {selection}", "mutation"), doc.values()


async def seed_writes(runtime: Runtime) -> list[tuple[str, dict[str, Any]]]:
    """Writes that answer every member: on a user with credits, held credits, a run-out hold."""
    user = await make_user(runtime, credits_granted=10_000, calendar_allowances=False)
    other = await make_user(runtime, credits_granted=10, calendar_allowances=False)
    now = runtime.clock()

    async def hold(session, user_id: int, ttl: int) -> str:
        held = await holds.reserve_credits(
            session,
            user=UserRef(user_id=user_id),
            amount=1,
            reason="seed",
            actor=SUPPORT,
            now=now,
            catalog=runtime.catalog,
            ttl_seconds=ttl,
        )
        assert isinstance(held, holds.HoldChanged), held
        return str(held.hold.id)

    held = [await runtime.db.write(lambda s: hold(s, user.id, 3600)) for _ in range(6)]
    run_out = await runtime.db.write(lambda s: hold(s, other.id, 30))
    runtime.clock.advance(seconds=60)
    uid = str(user.id)
    pdf = {"userId": uid, "feature": "pdf_exports", "hasAccess": True}
    overrides = [
        {**pdf, "limit": 4, "idempotencyKey": "o-1"},
        {**pdf, "limit": 5, "idempotencyKey": "o-1"},
        {**pdf, "expiresAt": (now + timedelta(days=2)).isoformat()},
        {"email": user.email, "feature": "api_access", "hasAccess": False},
        {**pdf, "feature": "teleport"},
        {**pdf, "userId": "99999999"},
        {**pdf, "hasAccess": False, "limit": 3},
    ]
    return [
        ("consumeCredits", {"userId": uid, "amount": 1}),
        ("consumeCredits", {"email": user.email, "amount": 2, "reason": "chat"}),
        ("consumeCredits", {"userId": uid, "amount": 999_999}),
        ("consumeCredits", {"email": "nobody@example.com", "amount": 1}),
        ("consumeCredits", {"userId": uid, "amount": -1}),
        ("consumeCredits", {"userId": uid, "amount": 1, "idempotencyKey": "k-1"}),
        ("consumeCredits", {"userId": uid, "amount": 2, "idempotencyKey": "k-1"}),
        ("grantCredits", {"userId": uid, "amount": 3, "reason": "gift"}),
        ("grantCredits", {"userId": uid, "email": user.email, "amount": 3, "reason": "x"}),
        ("setTier", {"userId": uid, "tier": "pro", "reason": "r"}),
        ("setTier", {"email": user.email, "tier": "free", "reason": "r"}),
        ("setTier", {"userId": uid, "tier": "gold", "reason": "r"}),
        ("setTier", {"userId": "99999999", "tier": "pro", "reason": "r"}),
        ("reserveCredits", {"userId": uid, "amount": 1, "reason": "call"}),
        ("reserveCredits", {"userId": uid, "amount": 999_999, "reason": "call"}),
        *(("settleHold", {"holdId": h, "amount": 1}) for h in held[:3]),
        ("settleHold", {"holdId": run_out, "amount": 1}),
        ("settleHold", {"holdId": "nope", "amount": 1}),
        ("settleHold", {"holdId": held[0], "amount": 5}),
        *(("releaseHold", {"holdId": h}) for h in held[2:]),
        ("releaseHold", {"holdId": "nope"}),
        ("recordUsage", {"userId": uid, "feature": "projects"}),
        ("recordUsage", {"email": user.email, "feature": "pdf_exports", "quantity": 2}),
        ("recordUsage", {"userId": uid, "feature": "pdf_exports", "quantity": 999}),
        ("recordUsage", {"userId": uid, "feature": "teleport"}),
        ("recordUsage", {"userId": uid, "feature": "api_access", "quantity": -1}),
        *(("setEntitlementOverride", {"reason": "r", **fields}) for fields in overrides),
    ]


@pytest.mark.slow
async def test_random_result_selections_answer_the_same_on_both_executors(
    runtime: Runtime,
) -> None:
    writes = await seed_writes(runtime)
    # Support and admin may make every write; the AI backend's service key spends and holds
    # only; a viewer makes none of them.
    callers = [
        (Principal(role="support", name="s"), 2),
        (Principal(role="admin", name="a"), 1),
        (Principal(role="service", name="ai"), 1),
        (Principal(role="viewer", name="u", user_id=1), 1),
    ]
    loop = asyncio.get_running_loop()
    members: Counter[str] = Counter()
    refused = 0

    def check_write(name: str, fields: dict[str, Any], principal: Principal, examples: int) -> None:
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(document=write_document(name, fields))
        def check(document: tuple[str, dict[str, Any]]) -> None:
            nonlocal refused
            query, variables = document
            assert validate(SCHEMA, parse(query)) == [], query
            context = context_for(runtime, principal)
            future = asyncio.run_coroutine_threadsafe(
                on_both_executors(context, query, variables), loop
            )
            compiled, result = future.result()
            if result.errors:
                assert compiled is None, (query, result.errors)
                refused += 1
                return
            assert compiled is not None, query
            assert orjson.dumps(compiled) == orjson.dumps(result.data), query
            members[type(context.written(next(iter(compiled)))).__name__] += 1

        check()

    def check_all() -> None:
        for name, fields in writes:
            for principal, examples in callers:
                check_write(name, fields, principal, examples)

    await asyncio.to_thread(check_all)
    # Every member of every result union was answered compiled; refusals stepped aside.
    assert refused >= len(writes)
    assert set(members) == {
        "CreditChange",
        "TierUpdate",
        "CreditHold",
        "InsufficientCredits",
        "UserNotFound",
        "InvalidInput",
        "IdempotencyConflict",
        "UnknownTier",
        "HoldNotFound",
        "HoldNotActive",
        "HoldExpired",
        "EntitlementUsage",
        "LimitExceeded",
        "UnknownFeature",
        "EntitlementOverrideChange",
    }, members

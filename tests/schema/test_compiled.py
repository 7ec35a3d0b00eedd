"""The compiled executor answers exactly what graphql-core answers, for any covered selection.

Random documents (aliases, named and inline fragments, @skip/@include on variables,
__typename, nested connections with first/after, fields a caller may not read) run on both
executors against one seeded database; where graphql-core answers without errors, the compiled
executor must answer too, with equal data; where graphql-core reports errors, it must step aside.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any

import httpx
import orjson
import pytest
from graphql import (
    ExecutionResult,
    get_named_type,
    is_abstract_type,
    is_leaf_type,
    parse,
    validate,
)
from graphql import execute as graphql_execute
from graphql.execution.values import VariableValues
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from gateway.app import create_app
from gateway.compiled import execution
from gateway.compiled.fields import FIELDS
from gateway.compiled.plan import compile_operation
from resolvers.entitlements import overrides, usage
from resolvers.ledger import credits, tiers
from resolvers.models import Payment, User
from resolvers.users import UserRef
from schema import schema
from schema.connections import encode_cursor
from schema.context import Context, Principal
from tests.conftest import StatementCounter
from tests.factories import SUPPORT, make_user
from tests.schema.conftest import user_token

SCHEMA = schema._schema
MAX_DEPTH = 6


@dataclass
class Document:
    """A document under construction: fragments and variables gathered along the way."""

    names: itertools.count = field(default_factory=itertools.count)
    fragments: list[str] = field(default_factory=list)
    variables: dict[str, tuple[str, Any]] = field(default_factory=dict)

    def variable(self, graphql_type: str, value: Any) -> str:
        name = f"v{next(self.names)}"
        self.variables[name] = (graphql_type, value)
        return f"${name}"

    def text(self, root: str, operation: str = "query") -> str:
        definitions = ", ".join(f"${n}: {t}" for n, (t, _) in self.variables.items())
        head = f"{operation} Q({definitions})" if definitions else f"{operation} Q"
        return "\n".join([f"{head} {{ {root} }}", *self.fragments])

    def values(self) -> dict[str, Any]:
        return {n: v for n, (_, v) in self.variables.items()}


@st.composite
def arguments(draw: st.DrawFn, field_name: str, doc: Document, args: list[str]) -> str:
    given_args = []
    if "first" in args and draw(st.booleans()):
        first = draw(st.integers(1, 4))
        given_args.append(f"first: {doc.variable('Int', first) if draw(st.booleans()) else first}")
    if "after" in args and draw(st.integers(0, 3)) == 0:
        cursor = encode_cursor(draw(st.integers(1, 60)))
        given_args.append(f'after: "{cursor}"')
    if "feature" in args:
        feature = draw(st.sampled_from(["projects", "pdf_exports", "api_access", "teleport"]))
        given_args.append(
            f"feature: {doc.variable('String!', feature)}"
            if draw(st.booleans())
            else f'feature: "{feature}"'
        )
    return f"({', '.join(given_args)})" if given_args else ""


@st.composite
def selection_set(draw: st.DrawFn, type_name: str, doc: Document, depth: int) -> str:
    graphql_type = SCHEMA.get_type(type_name)
    if is_abstract_type(graphql_type):
        return draw(member_selections(graphql_type, doc, depth))
    names = sorted(FIELDS[type_name])
    picked = draw(st.lists(st.sampled_from([*names, "__typename"]), min_size=1, max_size=5))
    parts = []
    for name in picked:
        if name == "__typename":
            parts.append("__typename")
            continue
        definition = graphql_type.fields[name]
        child = get_named_type(definition.type)
        if not is_leaf_type(child) and depth <= 0:
            parts.append("__typename")
            continue
        alias = f"a{next(doc.names)}: " if definition.args or draw(st.booleans()) else ""
        text = draw(
            decorated(alias + name + draw(arguments(name, doc, list(definition.args))), doc)
        )
        if not is_leaf_type(child):
            text += " " + draw(selection_set(child.name, doc, depth - 1))
        parts.append(text)
    body = " ".join(parts)
    wrapping = draw(st.integers(0, 5))
    if wrapping == 0:
        body = f"... on {type_name} {{ {body} }} __typename"
    elif wrapping == 1:
        fragment = f"F{next(doc.names)}"
        doc.fragments.append(f"fragment {fragment} on {type_name} {{ {body} }}")
        body = f"...{fragment} __typename"
    return f"{{ {body} }}"


@st.composite
def member_selections(draw: st.DrawFn, union: Any, doc: Document, depth: int) -> str:
    """A union's selection: fragments on some of its members (each inline, named, or on the
    union itself), __typename, all of it possibly under @skip/@include."""
    members = [m.name for m in SCHEMA.get_possible_types(union)]
    picked = draw(st.lists(st.sampled_from([*members, union.name, "__typename"]), max_size=4))
    parts = []
    for name in picked or ["__typename"]:
        if name == "__typename":
            parts.append(draw(decorated("__typename", doc)))
            continue
        # On the union itself only __typename may be selected: its fragment holds one.
        body = "__typename" if name == union.name else draw(selection_set(name, doc, depth))
        if name != union.name:
            body = body[1:-1].strip()  # the braces come from the fragment
        if draw(st.booleans()):
            # A fragment's directives stand before its selection set.
            parts.append(draw(decorated(f"... on {name}", doc)) + f" {{ {body} }}")
        else:
            fragment = f"F{next(doc.names)}"
            doc.fragments.append(f"fragment {fragment} on {name} {{ {body} }}")
            parts.append(draw(decorated(f"...{fragment}", doc)))
    return f"{{ {' '.join(parts)} }}"


@st.composite
def decorated(draw: st.DrawFn, text: str, doc: Document) -> str:
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return f"{text} @skip(if: {doc.variable('Boolean!', draw(st.booleans()))})"
    if choice == 1:
        return f"{text} @include(if: {doc.variable('Boolean!', draw(st.booleans()))})"
    return text


@st.composite
def documents(
    draw: st.DrawFn, emails: list[str], ids: list[int], roots: list[str] | None = None
) -> tuple[str, dict[str, Any]]:
    doc = Document()
    root = draw(st.sampled_from(roots or [*ROOTS_DRAWN, "pricing", "entitlementChanges"]))
    if root == "viewer":
        text = "viewer " + draw(selection_set("User", doc, MAX_DEPTH))
    elif root == "user":
        if draw(st.booleans()):
            argument = f"email: {doc.variable('String', draw(st.sampled_from(emails)))}"
        else:
            argument = f'id: "{draw(st.sampled_from(ids))}"'
        text = f"user({argument}) " + draw(selection_set("User", doc, MAX_DEPTH))
    elif root == "users":
        tier = draw(st.sampled_from(["", ', tier: "pro"', ', tier: "free"']))
        first = draw(st.integers(1, 5))
        text = f"users(first: {first}{tier}) " + draw(selection_set("UserConnection", doc, 7))
    elif root == "payments":
        text = "payments" + draw(arguments("payments", doc, ["first", "after"]))
        text += " " + draw(selection_set("PaymentConnection", doc, 5))
    elif root == "payment":
        ref = draw(st.sampled_from([*(f"cs_{i}" for i in ids), *map(str, ids), " cs_1 ", "x"]))
        argument = doc.variable("String!", ref) if draw(st.booleans()) else f'"{ref}"'
        text = f"payment(ref: {argument}) " + draw(selection_set("Payment", doc, 4))
    elif root == "pricing":
        text = "pricing" + draw(pricing_arguments(doc))
        text += " " + draw(selection_set("Pricing", doc, 3))
    elif root == "entitlementChanges":
        # Mostly the request id the seed wrote under: lists with every member of the union.
        request_id = draw(st.sampled_from(["req-test", "req-test", "req-test", "req-none", ""]))
        argument = doc.variable("String!", request_id) if draw(st.booleans()) else f'"{request_id}"'
        text = f"entitlementChanges(requestId: {argument}) "
        text += draw(selection_set("EntitlementChange", doc, 3))
    else:
        locale = draw(st.sampled_from(["", '(locale: "nl")', '(locale: "xx")']))
        text = f"plans{locale} " + draw(selection_set("Plan", doc, 1))
    return doc.text(text), doc.values()


ROOTS_DRAWN = ["viewer", "user", "users", "plans", "payments", "payment"]
# Locales the catalog has (en, nl, de), with a region, unknown, malformed; currencies it sells
# (in any case) and one it does not (BAD_USER_INPUT).
LOCALES = [None, "nl", "de", "de-DE", "en-US", "en-GB", "nl-BE", "xx", "fr", "!!"]
CURRENCIES = [None, "EUR", "usd", "GBP"]


@st.composite
def pricing_arguments(draw: st.DrawFn, doc: Document) -> str:
    given_args = []
    for name, values in (("locale", LOCALES), ("currency", CURRENCIES)):
        if (value := draw(st.sampled_from(values))) is None and draw(st.booleans()):
            continue  # not given at all, rather than given as null
        literal = "null" if value is None else f'"{value}"'
        given_args.append(
            f"{name}: {doc.variable('String', value) if draw(st.booleans()) else literal}"
        )
    return f"({', '.join(given_args)})" if given_args else ""


async def seed(runtime, clock) -> tuple[list[str], list[int]]:
    """Users with grants, payments and subscriptions; then a month passes without a write, so
    some grants have expired unwritten and this month's allowances are due but not granted."""
    made = []
    for n, tier in enumerate(["free", "pro", "pro", "free"]):
        user = await make_user(
            runtime,
            tier=tier,
            credits_granted=10 * (n + 1),
            expires_at=clock.now + timedelta(days=3),
        )
        made.append(user)

    async def extras(session):
        for n, user in enumerate(made):
            payment = Payment(
                user_id=user.id,
                kind="credit_pack",
                stripe_object_id=f"cs_{user.id}",
                amount=500 + n,
                currency="EUR",
                status="succeeded",
                amount_refunded=0,
                credits_granted=100,
                credits_revoked=0,
                credits_unrecovered=0,
                created_at=clock.now,
            )
            session.add(payment)
            await session.flush()
            granted = await credits.grant_ai_credits(
                session,
                user=UserRef(user_id=user.id),
                amount=100,
                reason="pack",
                actor=SUPPORT,
                now=clock.now,
                payment_id=payment.id,
                is_purchased=True,
            )
            assert isinstance(granted, credits.CreditChanged)
        await session.execute(
            update(User)
            .where(User.id == made[2].id)
            .values(
                stripe_subscription_id="sub_1",
                subscription_status="active",
                subscription_price_id="price_pro",
                subscription_period_end=clock.now + timedelta(days=20),
                locale="nl",
            )
        )

    async def entitlement_data(session):
        # Usage this period and last, a subscriber's billing period, an expiring override.
        for n, user in enumerate(made):
            for feature, quantity in (("projects", 1 + n % 3), ("pdf_exports", n + 1)):
                counted = await usage.record_usage(
                    session,
                    user=UserRef(user_id=user.id),
                    feature=feature,
                    quantity=quantity,
                    actor=SUPPORT,
                    now=clock.now + timedelta(days=34),
                    catalog=runtime.catalog,
                )
                assert isinstance(counted, usage.UsageRecorded), counted
        for user, has_access, limit, days in ((made[0], True, 2, 60), (made[1], False, None, 10)):
            changed = await overrides.set_entitlement_override(
                session,
                user=UserRef(user_id=user.id),
                feature="api_access",
                has_access=has_access,
                limit=limit,
                reason="seed",
                actor=SUPPORT,
                now=clock.now,
                catalog=runtime.catalog,
                expires_at=clock.now + timedelta(days=days),
            )
            assert isinstance(changed, overrides.OverrideSet), changed
        # Tier changes under the same request id as the grants and overrides (req-test): the
        # entitlementChanges of it hold every member of its union.
        for tier in ("pro", "free"):
            moved = await tiers.set_tier(
                session,
                user=UserRef(user_id=made[3].id),
                tier=tier,
                reason="seed",
                actor=SUPPORT,
                now=clock.now,
                catalog=runtime.catalog,
            )
            assert isinstance(moved, tiers.TierSet), moved

    await runtime.db.write(extras)
    await runtime.db.write(entitlement_data)
    clock.advance(days=35)
    return [u.email for u in made] + ["nobody@example.com"], [u.id for u in made] + [999]


def context_for(
    runtime, principal: Principal | None, accept_language: str | None = None
) -> Context:
    return Context(
        db=runtime.db,
        catalog=runtime.catalog,
        clock=runtime.clock,
        request_id="req-compiled",
        principal=principal,
        app_base_url="http://app.test",
        accept_language=accept_language,
    )


async def both(
    runtime,
    principal,
    query: str,
    variables: dict[str, Any],
    accept_language: str | None = None,
):
    document = parse(query)
    assert validate(SCHEMA, document) == [], query
    plan = compile_operation(SCHEMA, document, "Q")
    assert plan is not None, f"not compiled: {query}"
    compiled = await execution.execute(
        plan, context_for(runtime, principal, accept_language), variables
    )
    result = graphql_execute(
        SCHEMA,
        document,
        context_value=context_for(runtime, principal, accept_language),
        variable_values=variables,
    )
    if not isinstance(result, ExecutionResult):
        result = await result
    return compiled, result


@pytest.mark.slow
async def test_random_selections_answer_the_same_on_both_executors(runtime, clock) -> None:
    emails, ids = await seed(runtime, clock)
    principals = [
        Principal(role="viewer", name="u", user_id=ids[1]),
        Principal(role="viewer", name="u", user_id=ids[2]),
        Principal(role="support", name="s"),
        Principal(role="dashboard", name="d"),
        None,
    ]
    loop = asyncio.get_running_loop()
    answered = []

    @settings(
        max_examples=120,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        document=documents(emails, ids),
        principal=st.sampled_from(principals),
        accept_language=st.sampled_from([None, "de-DE,de;q=0.9", "nl, en;q=0.5", "xx"]),
    )
    # One root in eight is pricing, and many drawn pricing documents are refused (an unsold
    # currency, a malformed locale): a run drew no answered one now and then. This one is
    # always sent, anonymously; the drawn ones vary around it.
    @example(
        document=(
            "query Q($v0: String) { pricing(currency: $v0) { locale currency tiers { name } } }",
            {"v0": "EUR"},
        ),
        principal=None,
        accept_language="de-DE,de;q=0.9",
    )
    def check(
        document: tuple[str, dict[str, Any]],
        principal: Principal | None,
        accept_language: str | None,
    ) -> None:
        query, variables = document
        future = asyncio.run_coroutine_threadsafe(
            both(runtime, principal, query, variables, accept_language), loop
        )
        compiled, result = future.result()
        if result.errors:
            assert compiled is None, (query, result.errors)
        else:
            # As bytes: the order of keys must match too.
            assert orjson.dumps(compiled) == orjson.dumps(result.data), query
            answered.append(query)

    await asyncio.to_thread(check)
    assert len(answered) > 30  # most random documents are answered without errors
    # Anyone may read the pricing page: it is among the answers (entitlementChanges, which
    # only support reads, is checked on its own in test_compiled_coverage.py).
    assert any("pricing" in q for q in answered)


async def test_a_refused_field_or_a_bad_argument_is_left_to_graphql_core(runtime, clock) -> None:
    _emails, ids = await seed(runtime, clock)
    viewer = Principal(role="viewer", name="u", user_id=ids[0])
    for principal, query in [
        (viewer, "query Q { user(id: 1) { email } }"),
        (None, "query Q { viewer { email } }"),
        (viewer, "query Q { viewer { creditEvents(first: 500) { edges { cursor } } } }"),
        (viewer, 'query Q { viewer { payments(after: "nope") { edges { cursor } } } }'),
        (Principal(role="support", name="s"), 'query Q { user(email: "a@b.c", id: 1) { id } }'),
    ]:
        compiled, result = await both(runtime, principal, query, {})
        assert compiled is None
        assert result.errors


async def test_payments_and_a_payment_by_stripe_id_answer_from_the_plan(runtime, clock) -> None:
    _emails, ids = await seed(runtime, clock)
    support, dashboard = Principal(role="support", name="s"), Principal(role="dashboard", name="d")
    query = (
        "query Q($after: String) { payments(first: 2, after: $after) { edges { cursor node {"
        " id amount user { email } grants { amount } } } pageInfo { hasNextPage endCursor } } }"
    )
    compiled, result = await both(runtime, dashboard, query, {"after": None})
    assert result.errors is None and compiled == result.data
    assert [e["node"]["amount"] for e in compiled["payments"]["edges"]] == [503, 502]
    after = compiled["payments"]["pageInfo"]["endCursor"]
    compiled, result = await both(runtime, dashboard, query, {"after": after})
    assert result.errors is None and compiled == result.data
    assert [e["node"]["amount"] for e in compiled["payments"]["edges"]] == [501, 500]
    for ref in (f" cs_{ids[1]} ", "cs_nobody"):
        lookup = f'query Q {{ payment(ref: "{ref}") {{ amount creditEvents {{ amount }} }} }}'
        compiled, result = await both(runtime, support, lookup, {})
        assert result.errors is None and compiled == result.data
    assert compiled == {"payment": None}
    # Roles still come from the schema: a viewer may read neither.
    viewer = Principal(role="viewer", name="u", user_id=ids[0])
    compiled, result = await both(runtime, viewer, query, {"after": None})
    assert compiled is None and result.errors


async def test_the_entitlement_check_is_one_statement_for_every_kind_of_user(
    runtime, clock
) -> None:
    """Usage, overrides and a subscriber's billing period all come from the one user row."""
    _emails, ids = await seed(runtime, clock)
    fields = "hasAccess limit usage remaining resetsAt source"
    query = f'query Q {{ viewer {{ entitlement(feature: "pdf_exports") {{ {fields} }} }} }}'
    app = create_app(runtime)
    answers = []
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
    ) as http:
        for user_id in ids[:-1]:
            counter = StatementCounter(runtime.db)
            try:
                response = await http.post(
                    "/graphql",
                    json={"query": query},
                    headers={"Authorization": f"Bearer {user_token(user_id)}"},
                )
            finally:
                counter.close()
            assert counter.count == 1, counter.statements
            viewer = Principal(role="viewer", name="u", user_id=user_id)
            compiled, result = await both(runtime, viewer, query, {})
            assert result.errors is None
            assert response.json() == {"data": compiled} == {"data": result.data}
            answers.append(compiled["viewer"]["entitlement"])
    # The subscriber's period (seeded to end 20 days in, read 35 days in) is the next one from
    # that anchor; everyone else's ends when the next calendar month starts.
    anchor = clock.now - timedelta(days=15)
    for n, answer in enumerate(answers):
        resets = datetime.fromisoformat(answer["resetsAt"])
        assert answer["source"] == "PLAN"
        if n == 2:
            assert resets.time() == anchor.time() and 28 <= (resets - anchor).days <= 31
        else:
            assert (resets.day, resets.time()) == (1, time(0)) and resets > clock.now


async def test_uncovered_fields_and_mutations_are_not_compiled() -> None:
    for query in [
        'query Q { viewer { premiumOverlay(sessionId: "s") { eligible } } }',
        "query Q { __schema { queryType { name } } }",
        "query Q { metrics { days } }",
        'mutation Q { trackEvent(input: {name: "x", sessionId: "s"}) { __typename } }',
    ]:
        assert compile_operation(SCHEMA, parse(query), "Q") is None, query


async def test_the_entitlement_check_answers_from_the_plan(runtime, clock) -> None:
    _emails, ids = await seed(runtime, clock)
    query = (
        'query Q { viewer { entitlement(feature: "projects") { hasAccess remaining } '
        "entitlements { feature hasAccess remaining resetsAt source } } }"
    )
    compiled, result = await both(
        runtime, Principal(role="viewer", name="u", user_id=ids[0]), query, {}
    )
    assert result.errors is None
    assert compiled == result.data
    # Free: 3 projects, 1 used; the override of api_access is still on (60 days).
    assert compiled["viewer"]["entitlement"] == {"hasAccess": True, "remaining": 2}
    shown = {e["feature"]: e for e in compiled["viewer"]["entitlements"]}
    assert (shown["api_access"]["source"], shown["api_access"]["remaining"]) == ("OVERRIDE", 2)


async def test_a_refused_literal_argument_is_refused_once_when_compiled(runtime, clock) -> None:
    """Literal text is checked when the plan is built; graphql-core then words the error."""
    _emails, ids = await seed(runtime, clock)
    viewer = Principal(role="viewer", name="u", user_id=ids[0])
    template = 'query Q {{ viewer {{ entitlement(feature: "{}") {{ hasAccess }} }} }}'
    refused = compile_operation(SCHEMA, parse(template.format("pdf\\u0007exports")), "Q")
    clean = compile_operation(SCHEMA, parse(template.format("pdf_exports")), "Q")
    assert refused is not None and clean is not None
    empty = VariableValues({}, {})
    assert [p.refused for p in refused.tree(empty)[0].children] == [True]
    assert [p.refused for p in clean.tree(empty)[0].children] == [False]
    compiled, result = await both(runtime, viewer, template.format("pdf\\u0007exports"), {})
    assert compiled is None
    assert result.errors and "control character U+0007" in result.errors[0].message
    compiled, result = await both(runtime, viewer, template.format("pdf_exports"), {})
    assert result.errors is None and compiled == result.data


async def test_the_viewer_read_answers_from_the_plan(runtime, clock) -> None:
    _emails, ids = await seed(runtime, clock)
    query = "query Q { viewer { email tier credits { available nextExpiry } plan { code } } }"
    compiled, result = await both(
        runtime, Principal(role="viewer", name="u", user_id=ids[1]), query, {}
    )
    assert result.errors is None
    assert compiled == result.data
    # A month passed without a write: the pro allowance is due and shows, the grant expired.
    pro_allowance = runtime.catalog.tier("pro").monthly_credits
    assert compiled["viewer"]["credits"]["available"] == 100 + pro_allowance
    assert compiled["viewer"]["tier"] == "pro"


async def test_the_viewer_read_is_one_statement_the_engines_listeners_see(runtime) -> None:
    # The plan reads on the driver itself; statement counts and SQL spans must still see it.
    user = await make_user(runtime, credits_granted=5)
    counter = StatementCounter(runtime.db)
    app = create_app(runtime)
    headers = {"Authorization": f"Bearer {user_token(user.id)}"}
    query = {"query": "query Badge { viewer { tier credits { available } } }"}
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
        ) as http:
            response = await http.post("/graphql", json=query, headers=headers)
    finally:
        counter.close()
    assert response.json() == {"data": {"viewer": {"tier": user.tier, "credits": {"available": 5}}}}
    assert counter.count == 1
    assert "FROM users" in counter.statements[0]

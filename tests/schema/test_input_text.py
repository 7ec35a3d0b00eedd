"""Text refused at the boundary: every string argument of every root field, over HTTP.

The sweep walks the schema itself, so a field added later is covered by this test unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from graphql import (
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLUnionType,
    Undefined,
    get_named_type,
)
from sqlalchemy import select

from gateway.runtime import Runtime
from resolvers.models import AnalyticsEvent, Base, User
from schema import schema
from tests.factories import make_user
from tests.schema.conftest import GraphQLClient, data_of, error_codes

GRAPHQL = schema._schema
NUL = "cta\x00click"
LONE_SURROGATE = "cta\ud800click"
TEXT_SCALARS = ("String", "ID", "JSON")


@dataclass(frozen=True)
class Target:
    """One place a client can put text: a root field's argument, or a field of its input."""

    operation: str  # "query" or "mutation"
    field: str
    path: tuple[str, ...]  # argument name, then input field names

    @property
    def expected_field(self) -> str:
        """What InvalidInput.field (or the error message) must name."""
        return self.path[1] if self.path[0] == "input" and len(self.path) > 1 else self.path[0]


def _text_paths(kind: GraphQLInputType, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    named = get_named_type(kind)
    if isinstance(named, GraphQLScalarType) and named.name in TEXT_SCALARS:
        yield path
    elif isinstance(named, GraphQLInputObjectType):
        for name, field in named.fields.items():
            yield from _text_paths(field.type, (*path, name))


def targets() -> list[Target]:
    found = []
    for operation, root in (("query", GRAPHQL.query_type), ("mutation", GRAPHQL.mutation_type)):
        assert root is not None
        for field_name, field in root.fields.items():
            for arg_name, arg in field.args.items():
                for path in _text_paths(arg.type, (arg_name,)):
                    found.append(Target(operation, field_name, path))
    return found


TARGETS = targets()


def test_the_sweep_reaches_every_kind_of_text_argument() -> None:
    """Guards the walk itself: a bug that found nothing would make the sweep pass vacuously."""
    names = {(t.field, t.path) for t in TARGETS}
    assert ("grantCredits", ("input", "reason")) in names
    assert ("trackEvent", ("input", "properties")) in names
    assert ("analyticsEvents", ("names",)) in names
    assert ("users", ("search",)) in names
    assert ("replayWebhookEvent", ("id",)) in names
    assert len(TARGETS) >= 40


def _filler(kind: GraphQLInputType, name: str, known: dict[str, Any]) -> Any:
    """A plausible value, so that without the check the request could well have succeeded."""
    if isinstance(kind, GraphQLNonNull):
        return _filler(kind.of_type, name, known)
    if isinstance(kind, GraphQLList):
        return [_filler(kind.of_type, name, known)]
    if isinstance(kind, GraphQLInputObjectType):
        return {
            field_name: _filler(field.type, field_name, known)
            for field_name, field in kind.fields.items()
            if field_name in known or _is_required(field.type, field.default_value)
        }
    if isinstance(kind, GraphQLEnumType):
        return next(iter(kind.values))
    assert isinstance(kind, GraphQLScalarType)
    if name in known:
        return known[name]
    return {"Int": 1, "Float": 1.0, "Boolean": False, "ID": "1", "JSON": {}}.get(kind.name, "x")


def _is_required(kind: GraphQLInputType, default: Any) -> bool:
    return isinstance(kind, GraphQLNonNull) and default is Undefined


def _bad(kind: GraphQLInputType, text: str) -> Any:
    named = get_named_type(kind)
    value: Any = {"note": text} if named.name == "JSON" else text
    inner = kind.of_type if isinstance(kind, GraphQLNonNull) else kind
    return [value] if isinstance(inner, GraphQLList) else value


def _set(value: dict[str, Any], path: tuple[str, ...], bad: Any) -> None:
    for key in path[:-1]:
        value = value.setdefault(key, {})
    value[path[-1]] = bad


def _selection(field: GraphQLField) -> str:
    named = get_named_type(field.type)
    if _has_invalid_input(field):
        return "{ __typename ... on InvalidInput { field message code } }"
    if isinstance(named, GraphQLObjectType | GraphQLUnionType):
        return "{ __typename }"
    return ""


def request_for(target: Target, text: str, known: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    root = GRAPHQL.query_type if target.operation == "query" else GRAPHQL.mutation_type
    assert root is not None
    field = root.fields[target.field]
    variables: dict[str, Any] = {}
    for arg_name, arg in field.args.items():
        if arg_name == target.path[0] or arg_name in known or _is_required(arg.type, Undefined):
            variables[arg_name] = _filler(arg.type, arg_name, known)
    # An exactly-one-of pair (email | userId) stays valid: the bad text replaces the email.
    if target.path[-1] == "userId" or (target.path[-1] == "id" and target.field == "user"):
        _drop(variables, target.path[:-1], "email")
    leaf = _leaf_type(field, target.path)
    _set(variables, target.path, _bad(leaf, text))
    declared = ", ".join(f"${name}: {field.args[name].type}" for name in variables)
    arguments = ", ".join(f"{name}: ${name}" for name in variables)
    document = (
        f"{target.operation}({declared}) {{ {target.field}({arguments}) {_selection(field)} }}"
    )
    return document, variables


def _drop(variables: dict[str, Any], path: tuple[str, ...], key: str) -> None:
    for segment in path:
        variables = variables[segment]
    variables.pop(key, None)


def _leaf_type(field: GraphQLField, path: tuple[str, ...]) -> GraphQLInputType:
    kind: Any = field.args[path[0]].type
    for segment in path[1:]:
        kind = get_named_type(kind).fields[segment].type
    return kind


async def post_escaped(
    gql: GraphQLClient, query: str, variables: dict[str, Any], token: str
) -> httpx.Response:
    """As browsers' JSON.stringify sends a lone surrogate: an ASCII "\\ud800" escape."""
    return await gql.http.post(
        "/graphql",
        content=json.dumps({"query": query, "variables": variables}),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )


async def snapshot(runtime: Runtime) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: the sweep must leave all of it as it was."""
    rows = {}
    async with runtime.db.read() as session:
        for table in Base.metadata.sorted_tables:
            result = await session.execute(select(table).order_by(*table.primary_key.columns))
            rows[table.name] = [tuple(row) for row in result]
    return rows


@pytest.mark.parametrize("text", [NUL, LONE_SURROGATE], ids=["nul", "lone-surrogate"])
async def test_every_string_argument_refuses_bad_text_and_changes_nothing(
    runtime, gql, make_key, text: str
) -> None:
    admin = await make_key("admin")
    user = await make_user(runtime, credits_granted=10)
    known = {
        "email": user.email,
        "name": "cta_upgrade_click",
        "amount": 1,
        "tier": "pro",
    }
    before = await snapshot(runtime)
    for target in TARGETS:
        document, variables = request_for(target, text, known)
        response = await post_escaped(gql, document, variables, admin)
        assert response.status_code == 200, (target, response.text)
        body = response.json()
        result = (body.get("data") or {}).get(target.field)
        if isinstance(result, dict) and result.get("__typename") == "InvalidInput":
            assert result["field"] == target.expected_field, (target, result)
            assert result["code"] == "INVALID_INPUT"
        else:
            assert error_codes(body) == ["BAD_USER_INPUT"], (target, body)
            message = body["errors"][0]["message"]
            assert message.startswith(f"{target.expected_field}:"), (target, message)
            assert body["errors"][0]["extensions"]["requestId"] == response.headers["x-request-id"]
            root = GRAPHQL.mutation_type if target.operation == "mutation" else None
            # A mutation whose union can say InvalidInput must say it, not raise.
            assert root is None or not _has_invalid_input(root.fields[target.field]), target
            result = {"message": message}
        shown = result.get("message", "")
        assert ("NUL" in shown) if text == NUL else ("surrogate" in shown), (target, shown)
    assert await snapshot(runtime) == before


def _has_invalid_input(field: GraphQLField) -> bool:
    named = get_named_type(field.type)
    return isinstance(named, GraphQLUnionType) and any(
        t.name == "InvalidInput" for t in named.types
    )


async def test_the_same_request_with_clean_text_does_change_the_ledger(runtime, gql, make_key):
    """The sweep's requests are real ones: with clean text the grant goes through."""
    admin = await make_key("admin")
    user = await make_user(runtime)
    target = Target("mutation", "grantCredits", ("input", "reason"))
    known = {"email": user.email, "amount": 1}
    document, variables = request_for(target, "a clean reason", known)
    body = data_of(await gql(document, variables, token=admin))
    assert body["grantCredits"]["__typename"] == "CreditChange"


TRACK = (
    "mutation ($input: TrackEventInput!) { trackEvent(input: $input) { __typename "
    "... on InvalidInput { field message } ... on TrackedEvent { recorded } } }"
)


@pytest.mark.parametrize(
    ("properties", "reason"),
    [
        ({"note": "bell\x07"}, "control character U+0007"),
        ({"note": "c1\x85"}, "control character U+0085"),
        ({"bad\x00key": 1}, "NUL"),
        ({"a": {"b": {"c": {"d": {"e": 1}}}}}, "nested deeper"),
        ({"many": list(range(600))}, "more than 500 values"),
    ],
)
async def test_track_event_properties_are_checked_in_depth(
    runtime, gql, make_key, properties: dict[str, Any], reason: str
) -> None:
    support = await make_key("support")
    variables = {"input": {"name": "cta_upgrade_click", "properties": properties}}
    response = await post_escaped(gql, TRACK, variables, support)
    result = data_of(response.json())["trackEvent"]
    assert result["__typename"] == "InvalidInput" and result["field"] == "properties"
    assert reason in result["message"]
    assert "\x00" not in json.dumps(result)
    async with runtime.db.read() as session:
        assert (await session.execute(select(AnalyticsEvent))).first() is None


async def test_tabs_and_line_breaks_in_free_text_are_kept(runtime, gql, make_key) -> None:
    support = await make_key("support")
    properties = {"note": "line one\nline two\ttabbed", "nested": {"ok": ["é", "ünï", "日本"]}}
    variables = {"input": {"name": "cta_upgrade_click", "properties": properties}}
    result = data_of(await gql(TRACK, variables, token=support))["trackEvent"]
    assert result == {"__typename": "TrackedEvent", "recorded": True}


@pytest.mark.parametrize("email", ["evil\u202e@example.com", "zero\u200bwidth@example.com"])
async def test_an_email_with_bidi_or_invisible_characters_is_refused(
    runtime, gql, make_key, email: str
) -> None:
    service = await make_key("service")
    result = data_of(
        await gql(
            "mutation ($e: String!) { upsertUser(input: {email: $e}) { __typename "
            "... on InvalidInput { field } } }",
            {"e": email},
            token=service,
        )
    )["upsertUser"]
    assert result == {"__typename": "InvalidInput", "field": "email"}
    async with runtime.db.read() as session:
        assert (await session.execute(select(User))).first() is None


async def test_saved_query_variables_are_checked_too(gql, make_key) -> None:
    dashboard = await make_key("dashboard")
    variables = json.dumps({"names": ["cta_upgrade_click", LONE_SURROGATE]})
    response = await gql.http.get(
        "/graphql",
        params={"id": "cro_events", "variables": variables},
        headers={"Authorization": f"Bearer {dashboard}"},
    )
    assert response.status_code == 200
    body = response.json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["message"].startswith("names: contains a lone surrogate")


async def test_arguments_of_nested_fields_are_checked_too(runtime, gql, make_key) -> None:
    """The check wraps every field that takes arguments, not only the roots."""
    support = await make_key("support")
    user = await make_user(runtime, credits_granted=3)
    response = await post_escaped(
        gql,
        "query ($e: String, $after: String) { user(email: $e) { email "
        "creditEvents(after: $after) { edges { node { amount } } } } }",
        {"e": user.email, "after": LONE_SURROGATE},
        support,
    )
    body = response.json()
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["message"].startswith("after: contains a lone surrogate")
    assert body["errors"][0]["path"] == ["user", "creditEvents"]

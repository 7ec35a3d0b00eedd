"""Differential: arguments converted by gateway.compiled.inputs and by Strawberry are the same.

Random arguments for every Mutation field (each input field present or absent, null where it
may be, values of every scalar), coerced by graphql-core as it coerces a request's variables,
then converted both ways: where the compiled converter exists, the two results must be equal,
of the same classes, field by field.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC
from typing import Any

import pytest
from graphql import (
    GraphQLEnumType,
    GraphQLError,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLScalarType,
    Undefined,
)
from graphql.utilities import coerce_input_value
from hypothesis import given, settings
from hypothesis import strategies as st
from strawberry.types.arguments import convert_arguments

from gateway.compiled.inputs import compile_arguments
from gateway.compiled.writes import WRITES
from schema import build_schema

SCHEMA = build_schema()
MUTATION = SCHEMA._schema.mutation_type
REGISTRY = SCHEMA.schema_converter.scalar_registry
CONFIG = SCHEMA.config
assert MUTATION is not None

_SCALARS: dict[str, st.SearchStrategy[Any]] = {
    "Int": st.integers(-(2**31), 2**31 - 1),
    "Float": st.floats(allow_nan=False, allow_infinity=False),
    "String": st.text(max_size=12),
    "Boolean": st.booleans(),
    "ID": st.text(max_size=8) | st.integers(0, 10**6).map(str),
    "DateTime": st.datetimes(timezones=st.just(UTC)).map(lambda moment: moment.isoformat()),
}


def raw_value(type_: GraphQLInputType) -> st.SearchStrategy[Any]:
    """A JSON value of `type_` as a caller sends it in variables (null where it may be)."""
    if isinstance(type_, GraphQLNonNull):
        return _non_null(type_.of_type)
    return st.none() | _non_null(type_)


def _non_null(type_: GraphQLInputType) -> st.SearchStrategy[Any]:
    if isinstance(type_, GraphQLList):
        return st.lists(raw_value(type_.of_type), max_size=3)
    if isinstance(type_, GraphQLEnumType):
        return st.sampled_from(sorted(type_.values))
    if isinstance(type_, GraphQLScalarType):
        return _SCALARS.get(type_.name, st.text(max_size=8))
    assert isinstance(type_, GraphQLInputObjectType), type_
    return _some_of(type_.fields)


def _some_of(fields: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Every required field (non-null, no default), and any of the others."""
    required = {
        name: raw_value(field.type)
        for name, field in fields.items()
        if isinstance(field.type, GraphQLNonNull) and field.default_value is Undefined
    }
    optional = {name: raw_value(f.type) for name, f in fields.items() if name not in required}
    return st.fixed_dictionaries(required, optional=optional)


def fields_and_arguments() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    def arguments_of(name: str) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
        return st.tuples(st.just(name), _some_of(MUTATION.fields[name].args))

    return st.sampled_from(sorted(MUTATION.fields)).flatmap(arguments_of)


def coerced(name: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    """The arguments as graphql-core gives them to a resolver, or None: values it refuses."""
    field = MUTATION.fields[name]
    values = {}
    try:
        for argument_name, value in raw.items():
            values[argument_name] = coerce_input_value(value, field.args[argument_name].type)
    except GraphQLError:
        return None
    return values


def strawberry_arguments(name: str) -> Any:
    return MUTATION.fields[name].extensions["strawberry-definition"].arguments


def described(value: Any) -> Any:
    """A converted value with its classes: dataclass equality alone would not see them."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: described(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return (type(value), fields)
    if isinstance(value, dict):
        return {key: described(item) for key, item in value.items()}
    if isinstance(value, list):
        return [described(item) for item in value]
    return (type(value), value)


@pytest.mark.parametrize("name", sorted(WRITES))
def test_every_compiled_write_has_its_arguments_compiled(name: str) -> None:
    assert compile_arguments(strawberry_arguments(name), REGISTRY, CONFIG) is not None


@settings(max_examples=400, deadline=None)
@given(field_and_raw=fields_and_arguments())
def test_compiled_conversion_equals_strawberrys(field_and_raw: tuple[str, dict[str, Any]]) -> None:
    name, raw = field_and_raw
    arguments = coerced(name, raw)
    if arguments is None:
        return
    definitions = strawberry_arguments(name)
    convert = compile_arguments(definitions, REGISTRY, CONFIG)
    if convert is None:
        assert name not in WRITES
        return
    expected = convert_arguments(
        dict(arguments), definitions, scalar_registry=REGISTRY, config=CONFIG
    )
    assert described(convert(arguments)) == described(expected)


def test_a_sent_value_replaces_the_default_and_an_absent_one_keeps_it() -> None:
    definitions = strawberry_arguments("consumeCredits")
    convert = compile_arguments(definitions, REGISTRY, CONFIG)
    assert convert is not None
    sent = convert({"input": {"amount": 3, "reason": "r", "email": None}})["input"]
    assert (sent.amount, sent.reason, sent.email, sent.user_id) == (3, "r", None, None)
    arguments = coerced("consumeCredits", {"input": {"amount": 3}})
    assert arguments is not None
    default = convert(arguments)["input"]
    assert (default.amount, default.reason, default.email) == (3, "ai usage", None)

"""The one boundary check of argument text: every field's coerced arguments, before its resolver.

Installed once over the built schema, so a field added later is covered without a line of its
own. Literals and variables alike arrive here coerced (input objects and JSON as dicts), which
is also why a lone surrogate sent as a "\\ud800" variable is caught: Python's json accepts it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from graphql import (
    GraphQLField,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLSchema,
    GraphQLUnionType,
    default_field_resolver,
    get_named_type,
)

from resolvers import errors as domain
from resolvers.text import value_problem
from schema.context import BadUserInput
from schema.errors import InvalidInput, from_failure

Refusal = Callable[[domain.InvalidInput], Any]


def guard_arguments(schema: GraphQLSchema) -> None:
    """Wrap the resolver of every field that takes arguments with the text check."""
    for named in schema.type_map.values():
        if not isinstance(named, GraphQLObjectType) or named.name.startswith("__"):
            continue
        for field in named.fields.values():
            if field.args:
                field.resolve = _guarded(field.resolve or default_field_resolver, _refusal(field))


def argument_problem(args: dict[str, Any]) -> domain.InvalidInput | None:
    """The first argument text refused, named as a mutation's `InvalidInput.field` names it."""
    for name, value in args.items():
        found = value_problem(value, name)
        if found is None:
            continue
        path, reason = found
        # `input` is the conventional wrapper of a mutation's arguments: name what is inside.
        segments = path.replace("[", ".[").split(".")
        if segments[0] == "input" and len(segments) > 1:
            segments = segments[1:]
        field = segments[0]
        if len(segments) > 1:
            reason = f"{reason} (at {'.'.join(segments).replace('.[', '[')})"
        return domain.InvalidInput(field=field, reason=reason)
    return None


def _refusal(field: GraphQLField) -> Refusal:
    """A union with InvalidInput answers it as a value; any other field raises BAD_USER_INPUT."""
    result = get_named_type(field.type)
    if isinstance(result, GraphQLUnionType) and any(
        member.name == InvalidInput.__name__ for member in result.types
    ):
        return from_failure
    return _raise_bad_user_input


def _raise_bad_user_input(failure: domain.InvalidInput) -> Any:
    raise BadUserInput(failure.message)


def _guarded(resolve: Callable[..., Any], refuse: Refusal) -> Callable[..., Any]:
    def guarded(source: Any, info: GraphQLResolveInfo, **args: Any) -> Any:
        if (failure := argument_problem(args)) is not None:
            return refuse(failure)
        return resolve(source, info, **args)

    return guarded

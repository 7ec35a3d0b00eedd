"""A write's arguments converted as Strawberry converts them, by a function built once per field.

Strawberry's `convert_arguments` walks the argument's type on every call: it resolves each input
field's annotation and asks the scalar registry about it, per request. Profiled under
consumeCredits that walk was about 6% of the process. The write inputs are flat (scalars,
enums, nullable ones), so the conversion is fixed once the field is known: copy the fields the
caller sent under their Python names, None for those without a default, and build the input
class. A shape this does not cover (lists, nested inputs, Maybe, GlobalID, a custom
`from_input`) is not compiled and Strawberry converts it.
tests/schema/test_input_conversion.py holds the two equal on every write input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING
from typing import Any

from strawberry.relay.types import GlobalID
from strawberry.scalars import is_scalar
from strawberry.schema.config import StrawberryConfig
from strawberry.types.arguments import StrawberryArgument
from strawberry.types.base import StrawberryMaybe, StrawberryOptional, has_object_definition
from strawberry.types.enum import has_enum_definition

Converter = Callable[[Mapping[str, Any]], dict[str, Any]]
# (graphql name, python name) of each field, the class, the fields that default to None.
_Input = tuple[tuple[tuple[str, str], ...], type, dict[str, None]]


def compile_arguments(
    arguments: list[StrawberryArgument],
    scalar_registry: Mapping[object, Any],
    config: StrawberryConfig,
) -> Converter | None:
    """`convert_arguments` for these arguments, or None: a shape to leave to Strawberry."""
    plans: list[tuple[str, str, _Input | None]] = []
    for argument in arguments:
        assert argument.python_name
        name = config.name_converter.from_argument(argument)
        type_ = argument.type
        if isinstance(type_, StrawberryOptional) and not isinstance(type_, StrawberryMaybe):
            type_ = type_.of_type
        if _is_leaf(type_, scalar_registry):
            plans.append((name, argument.python_name, None))
            continue
        flat = _flat_input(type_, scalar_registry, config)
        if flat is None:
            return None
        plans.append((name, argument.python_name, flat))

    def convert(value: Mapping[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for name, python_name, flat in plans:
            if name in value:
                given = value[name]
                kwargs[python_name] = given if flat is None else _build(flat, given)
        return kwargs

    return convert


def _build(flat: _Input, value: Any) -> Any:
    if value is None or not isinstance(value, Mapping):
        # None stays None; UNSET and anything else are left as Strawberry leaves them.
        return value
    fields, cls, nones = flat
    kwargs: dict[str, Any] = dict(nones)
    for graphql_name, python_name in fields:
        if graphql_name in value:
            kwargs[python_name] = value[graphql_name]
    return cls(**kwargs)


def _flat_input(
    type_: Any, scalar_registry: Mapping[object, Any], config: StrawberryConfig
) -> _Input | None:
    """An input class whose fields are all leaves, as (fields, class, None defaults)."""
    if not has_object_definition(type_):
        return None
    definition = type_.__strawberry_definition__
    if not definition.is_input or definition.from_input is not None:
        return None
    fields = []
    for field in definition.fields:
        field_type = field.resolve_type(type_definition=definition)
        if isinstance(field_type, StrawberryMaybe):
            return None
        if isinstance(field_type, StrawberryOptional):
            field_type = field_type.of_type
        if not _is_leaf(field_type, scalar_registry):
            return None
        fields.append((config.name_converter.from_field(field), field.python_name))
    # As Strawberry does: None for every field without a default; sent values replace it.
    nones = {
        field.python_name: None
        for field in definition.fields
        if field.default_value is MISSING and field.default_factory is MISSING
    }
    return tuple(fields), type_, nones


def _is_leaf(type_: Any, scalar_registry: Mapping[object, Any]) -> bool:
    """A value Strawberry passes through as graphql-core coerced it."""
    if type_ is GlobalID:
        return False
    return is_scalar(type_, scalar_registry) or has_enum_definition(type_)

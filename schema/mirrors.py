"""GraphQL types made from the resolvers' frozen dataclasses, so that no field is copied by hand.

The resolvers' values are returned as they are; Strawberry reads their attributes. A field's
GraphQL type follows from its annotation: a tuple is a list, a dict is JSON, a dataclass already
mirrored is its GraphQL type; `types` names the few that differ (an integer id shown as ID).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import types as pytypes
from collections.abc import Callable, Mapping
from typing import Any, Union, get_args, get_origin, get_type_hints

import strawberry
from strawberry.scalars import JSON

# The GraphQL type made for each resolver dataclass, for the fields that hold one.
_MIRRORED: dict[type, type] = {}


def mirror(
    source: type,
    *,
    name: str | None = None,
    description: str | None = None,
    types: Mapping[str, Any] | None = None,
    descriptions: Mapping[str, str] | None = None,
    properties: Mapping[str, Any] | None = None,
) -> type:
    """A Strawberry type with the fields of the dataclass `source`, in order.

    `properties` adds read-only properties of `source` (name: GraphQL annotation) after them.
    """
    hints = get_type_hints(source)
    types, descriptions = types or {}, descriptions or {}
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {"__module__": __name__, "__annotations__": annotations}
    for field in dataclasses.fields(source):
        annotations[field.name] = types.get(field.name) or graphql_annotation(hints[field.name])
        if field.name in descriptions:
            namespace[field.name] = strawberry.field(description=descriptions[field.name])
    for attribute, annotation in (properties or {}).items():
        namespace[attribute] = strawberry.field(resolver=_reader(attribute, annotation))
    graphql_name = name or source.__name__
    made = strawberry.type(type(graphql_name, (), namespace), description=description)
    _MIRRORED[source] = made
    return made


def graphql_annotation(hint: Any) -> Any:
    """The annotation a GraphQL field needs for a dataclass field annotated `hint`."""
    origin = get_origin(hint)
    if origin is tuple:
        return list[graphql_annotation(get_args(hint)[0])]
    if origin in (Union, pytypes.UnionType):
        return functools.reduce(operator.or_, (graphql_annotation(a) for a in get_args(hint)))
    if origin is dict or hint is dict:
        return JSON
    return _MIRRORED.get(hint, hint)


def _reader(attribute: str, annotation: Any) -> Callable[[Any], Any]:
    def read(self: Any) -> Any:
        return getattr(self, attribute)

    read.__annotations__ = {"return": annotation}
    return read

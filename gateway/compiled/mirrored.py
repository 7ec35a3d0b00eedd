"""Compiled fields of the types schema/mirrors.py makes from the resolvers' frozen dataclasses.

Those types copy no field by hand, so neither does this: each dataclass field becomes the
compiled field of the same (camelCase) name, read from the value the resolver returned, and
shaped as graphql-core would serialize it.
"""

from __future__ import annotations

import dataclasses
import types as pytypes
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from operator import attrgetter
from typing import Any, Union, get_args, get_origin, get_type_hints

from strawberry.utils.str_converters import to_camel_case

from gateway.compiled.resolver import Resolver, attr, datetime_attr, source


def mirrored(dataclass: type) -> dict[str, Resolver]:
    """The compiled fields of the mirror of `dataclass`, by GraphQL name."""
    hints = get_type_hints(dataclass)
    return {
        to_camel_case(field.name): _reader(field.name, hints[field.name])
        for field in dataclasses.fields(dataclass)
    }


def _reader(name: str, hint: Any) -> Resolver:
    hint = _without_none(hint)
    if get_origin(hint) is tuple:
        # graphql-core answers a list; a tuple would differ from it in Python (not in JSON).
        return source(_listed(attrgetter(name)))
    if isinstance(hint, type) and issubclass(hint, Enum):
        # An enum is answered by its GraphQL name: the member's name, not its value.
        return source(_enum_name(attrgetter(name)))
    if hint is datetime:
        return datetime_attr(name)
    return attr(name)


def _without_none(hint: Any) -> Any:
    if get_origin(hint) in (Union, pytypes.UnionType):
        members = [a for a in get_args(hint) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return hint


def _listed(get: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def read(row: Any) -> list[Any] | None:
        value = get(row)
        return None if value is None else list(value)

    return read


def _enum_name(get: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def read(row: Any) -> str | None:
        value = get(row)
        return None if value is None else value.name

    return read

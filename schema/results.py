"""A resolver's result as a member of its field's GraphQL union: a payload, or a typed error."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

from resolvers.errors import Failure
from schema.errors import from_failure

S = TypeVar("S")
R = TypeVar("R")


def answer(result: S | Failure, payload: Callable[[S], R]) -> R:
    """The success value made into its payload by `payload`, a failure into its error type."""
    if isinstance(result, Failure):
        # The error type is a member of the field's union: graphql-core checks it as it
        # executes, and the completeness test checks every failure has a type.
        return cast(R, from_failure(result))
    return payload(result)

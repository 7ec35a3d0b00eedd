"""A resolver's result as a member of its field's GraphQL union: a payload, or a typed error."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from strawberry import Info

from resolvers.errors import Failure
from schema.context import Context
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


async def written_once(info: Info, write: Callable[[Context], Awaitable[R]]) -> R:
    """The answer of a mutation's write, made at most once per request.

    The compiled executor (gateway.compiled) makes the write itself and answers from its result;
    when it then leaves the answer to graphql-core, the write already made is answered again
    (or the exception it raised raised again), never made a second time.
    """
    context: Context = info.context
    made = context.written(info.path.key)
    if made is None:
        return await write(context)
    if isinstance(made, Exception):
        raise made
    return cast(R, made)

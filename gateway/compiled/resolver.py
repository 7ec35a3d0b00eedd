"""How a compiled field gets its value: from its source alone, with the run, or a batch at once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from operator import attrgetter
from typing import Any

from gateway.compiled.run import Run

Args = Mapping[str, Any]


class Kind(IntEnum):
    SOURCE = 0  # fn(source): a plain read of the row (the busiest kind: kept cheapest)
    WITH_RUN = 1  # fn(source, run, args): needs the time, the catalog or arguments
    BATCH = 2  # await fn(run, sources, args): one statement for every source of a level


@dataclass(frozen=True, slots=True)
class Resolver:
    kind: Kind
    fn: Callable[..., Any]
    # Whether its reads may run on the event loop itself (SQLite, gateway.local_reads): point
    # reads by key. False for reads through SQLAlchemy (Run.connection) and for long ones: a
    # plan with such a field reads on one pooled connection instead.
    on_loop: bool = True


def attr(name: str) -> Resolver:
    return Resolver(Kind.SOURCE, attrgetter(name))


def source(fn: Callable[[Any], Any]) -> Resolver:
    return Resolver(Kind.SOURCE, fn)


def with_run(fn: Callable[[Any, Run, Args], Any]) -> Resolver:
    return Resolver(Kind.WITH_RUN, fn)


def batch(
    fn: Callable[[Run, list[Any], Args], Awaitable[list[Any]]], *, on_loop: bool = True
) -> Resolver:
    return Resolver(Kind.BATCH, fn, on_loop)


def datetime_attr(name: str) -> Resolver:
    """A DateTime serialized as Strawberry's scalar does it (isoformat)."""
    get = attrgetter(name)

    def read(row: Any) -> str | None:
        value: datetime | None = get(row)
        return None if value is None else value.isoformat()

    return Resolver(Kind.SOURCE, read)


def id_attr(name: str) -> Resolver:
    """An ID: the row's integer as a string."""
    get = attrgetter(name)

    def read(row: Any) -> str | None:
        value = get(row)
        return None if value is None else str(value)

    return Resolver(Kind.SOURCE, read)

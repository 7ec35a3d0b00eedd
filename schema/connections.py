"""Cursor connections (`first`, `after`, `pageInfo`) over rows paged by their integer ids."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import strawberry

from resolvers.models import parse_row_id
from schema.context import BadUserInput

Node = TypeVar("Node")
DEFAULT_PAGE = 20
MAX_PAGE = 100


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class Edge(Generic[Node]):
    row_id: strawberry.Private[int]
    node: Node

    @strawberry.field
    def cursor(self) -> str:
        # Made only when asked for: most page views read nodes, not cursors.
        return encode_cursor(self.row_id)


@strawberry.type
class Connection(Generic[Node]):
    edges: list[Edge[Node]]
    page_info: PageInfo


def page_size(first: int | None) -> int:
    if first is None:
        return DEFAULT_PAGE
    if not 1 <= first <= MAX_PAGE:
        raise BadUserInput(f"first must be between 1 and {MAX_PAGE}")
    return first


def encode_cursor(row_id: int | str, kind: str = "id") -> str:
    """An opaque cursor: `kind:value` in URL-safe base64 (ids of rows, `evt` for Stripe events)."""
    return base64.urlsafe_b64encode(f"{kind}:{row_id}".encode()).decode()


def cursor_value(cursor: str | None, kind: str) -> str | None:
    """The value of a cursor of this kind that encode_cursor gave out; BAD_USER_INPUT if not."""
    if cursor is None:
        return None
    try:
        found, _, value = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        found, value = "", ""
    if found != kind or not value:
        raise BadUserInput("after is not a cursor this API gave out")
    return value


def decode_cursor(cursor: str | None) -> int | None:
    """The row id of an `id` cursor."""
    value = cursor_value(cursor, "id")
    if value is None:
        return None
    if (row_id := parse_row_id(value)) is None:
        raise BadUserInput("after is not a cursor this API gave out")
    return row_id


def connection(rows: Sequence[Any], first: int, wrap: Callable[[Any], Node]) -> Connection[Node]:
    """A page from `rows` fetched with one extra row, which only tells that more exist."""
    page = rows[:first]
    edges = [Edge(row_id=row.id, node=wrap(row)) for row in page]
    return Connection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=len(rows) > first,
            end_cursor=encode_cursor(page[-1].id) if page else None,
        ),
    )

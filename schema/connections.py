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


def encode_cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{row_id}".encode()).decode()


def decode_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        kind, _, value = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        if kind == "id" and (row_id := parse_row_id(value)) is not None:
            return row_id
    except (ValueError, UnicodeDecodeError):
        pass
    raise BadUserInput("after is not a cursor this API gave out")


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

"""Documents: each distinct query string parsed and validated once, in a bounded cache."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import strawberry
from graphql import (
    DocumentNode,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    parse,
    specified_rules,
    validate,
)
from graphql.language import FieldNode, visit
from graphql.language.visitor import Visitor
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter

MAX_DEPTH = 10
MAX_ALIASES = 30
MAX_TOKENS = 2_000
# One string literal is one token, so tokens alone do not bound a document's size, nor what
# the document cache holds: 500 entries of at most 20 KB.
MAX_QUERY_BYTES = 20_000
DOCUMENT_CACHE_SIZE = 500


@dataclass(frozen=True)
class PreparedDocument:
    """A query string parsed and validated once; what execution and role checks need of it."""

    document: DocumentNode | None
    errors: tuple[GraphQLError, ...]
    uses_introspection: bool
    operation_types: Mapping[str | None, OperationType]


class _IntrospectionFinder(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.found = False

    def enter_field(self, node: FieldNode, *_: Any) -> None:
        if node.name.value in ("__schema", "__type"):
            self.found = True


class DocumentCache:
    """Parse and validate each distinct query once. Bounded: clients cannot grow it forever."""

    def __init__(self, schema: strawberry.Schema, maxsize: int = DOCUMENT_CACHE_SIZE) -> None:
        self.graphql_schema = schema._schema
        self.maxsize = maxsize
        self.rules = [
            *specified_rules,
            *QueryDepthLimiter(max_depth=MAX_DEPTH).validation_rules,
            *MaxAliasesLimiter(max_alias_count=MAX_ALIASES).validation_rules,
        ]
        self._items: OrderedDict[str, PreparedDocument] = OrderedDict()

    def get(self, query: str) -> PreparedDocument:
        prepared = self._items.get(query)
        if prepared is not None:
            self._items.move_to_end(query)
            return prepared
        prepared = self.prepare(query)
        self._items[query] = prepared
        if len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        return prepared

    def prepare(self, query: str) -> PreparedDocument:
        try:
            document = parse(query, max_tokens=MAX_TOKENS)
        except GraphQLError as error:
            return PreparedDocument(None, (error,), False, {})
        errors = validate(self.graphql_schema, document, self.rules)
        finder = _IntrospectionFinder()
        visit(document, finder)
        operations = {
            (d.name.value if d.name else None): d.operation
            for d in document.definitions
            if isinstance(d, OperationDefinitionNode)
        }
        return PreparedDocument(document, tuple(errors), finder.found, operations)

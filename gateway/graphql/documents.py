"""Documents: each distinct query string parsed and validated once, in a cache bounded in bytes."""

from __future__ import annotations

import dataclasses
import gc
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import strawberry
from graphql import (
    DocumentNode,
    GraphQLError,
    GraphQLSyntaxError,
    OperationDefinitionNode,
    OperationType,
    parse,
    specified_rules,
    validate,
)
from graphql.language import FieldNode, Node, visit
from graphql.language.visitor import Visitor
from graphql.validation.validate import ValidationAbortedError
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter

from gateway.compiled.plan import Operation, compile_operation

MAX_DEPTH = 10
MAX_ALIASES = 30
# Tokens of a document not yet cached. Parsing stops at the budget, so a refusal costs at most
# that much; validation grows faster than linearly (overlapping fields compare pairs), so
# callers without a key get a budget several times their largest real document (~60 tokens)
# and far below what staff write in GraphiQL.
STAFF_MAX_TOKENS = 2_000
PUBLIC_MAX_TOKENS = 300
# One string literal is one token, so tokens alone do not bound a document's size.
MAX_QUERY_BYTES = 20_000
DOCUMENT_CACHE_BYTES = 32 * 1024 * 1024
# From tracemalloc over graphql-core 3.3's trees (tests/schema/test_documents.py keeps the
# estimate above the measurement): tokens and nodes keep ~150-200 bytes alive each (the tokens
# form a linked list the locations point into), the text is held several times (the key, the
# source, token and node values), and a validated document has ~15 KB of fixed cost. The
# constants are about twice that: a first use of a shape allocates more, and an estimate that
# runs low would let the cache outgrow its bound.
_BYTES_PER_DOCUMENT = 40_000
_BYTES_PER_SYNTAX_ERROR = 4_000
_BYTES_PER_TOKEN_OR_NODE = 400
_BYTES_PER_CHARACTER = 6


@dataclass(frozen=True)
class PreparedDocument:
    """A query string parsed and validated once; what execution and role checks need of it."""

    document: DocumentNode | None
    errors: tuple[GraphQLError, ...]
    uses_introspection: bool
    operation_types: Mapping[str | None, OperationType]
    estimated_bytes: int
    # Parsing stopped at the caller's token budget: not cached, a larger budget may accept it.
    over_budget: bool = False
    # Compiled plans by operation name, made on first use; None: graphql-core runs it.
    plans: dict[str | None, Operation | None] = dataclasses.field(
        default_factory=dict, compare=False
    )

    def plan(self, schema: strawberry.Schema, operation_name: str | None) -> Operation | None:
        if operation_name not in self.plans and self.document is not None:
            self.plans[operation_name] = compile_operation(
                schema._schema, self.document, operation_name
            )
        return self.plans.get(operation_name)

    @property
    def error_code(self) -> str:
        return "GRAPHQL_PARSE_FAILED" if self.document is None else "GRAPHQL_VALIDATION_FAILED"


class _DocumentSurvey(Visitor):
    """One pass over the tree: does it introspect, and how many nodes does it hold."""

    def __init__(self) -> None:
        super().__init__()
        self.uses_introspection = False
        self.nodes = 0

    def enter(self, node: Node, *_: Any) -> None:
        self.nodes += 1
        if isinstance(node, FieldNode) and node.name.value in ("__schema", "__type"):
            self.uses_introspection = True


class DocumentCache:
    """Parse and validate each distinct query once, keeping at most `max_bytes` of trees.

    Parsed trees are reference cycles (their tokens link both ways), which the tuned collector
    (gateway.app.tune_garbage_collector) rarely sweeps: evicted trees are collected here once a
    quarter of the cache has been evicted, so churn cannot grow the process.
    """

    def __init__(self, schema: strawberry.Schema, max_bytes: int = DOCUMENT_CACHE_BYTES) -> None:
        self.graphql_schema = schema._schema
        self.max_bytes = max_bytes
        self.rules = [
            *specified_rules,
            *QueryDepthLimiter(max_depth=MAX_DEPTH).validation_rules,
            *MaxAliasesLimiter(max_alias_count=MAX_ALIASES).validation_rules,
        ]
        self._items: OrderedDict[str, PreparedDocument] = OrderedDict()
        self.estimated_bytes = 0
        self._evicted_bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def cached(self, query: str) -> PreparedDocument | None:
        prepared = self._items.get(query)
        if prepared is not None:
            self._items.move_to_end(query)
        return prepared

    def add(self, query: str, *, max_tokens: int = STAFF_MAX_TOKENS) -> PreparedDocument:
        """Prepare a document not yet cached and keep it, unless it ran over the budget."""
        prepared = self.prepare(query, max_tokens=max_tokens)
        if prepared.over_budget or prepared.estimated_bytes > self.max_bytes:
            return prepared
        previous = self._items.pop(query, None)
        if previous is not None:
            self.estimated_bytes -= previous.estimated_bytes
        self._items[query] = prepared
        self.estimated_bytes += prepared.estimated_bytes
        while self.estimated_bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.estimated_bytes -= evicted.estimated_bytes
            self._evicted_bytes += evicted.estimated_bytes
        if self._evicted_bytes > self.max_bytes // 4:
            self._evicted_bytes = 0
            gc.collect()
        return prepared

    def prepare(self, query: str, *, max_tokens: int = STAFF_MAX_TOKENS) -> PreparedDocument:
        try:
            document = parse(query, max_tokens=max_tokens)
        except GraphQLSyntaxError as error:
            over_budget = "Parsing aborted" in error.message
            if over_budget:
                error = GraphQLSyntaxError(
                    error.source,
                    error.positions[0] if error.positions else 0,
                    f"The document has more than {max_tokens} tokens, the limit for a new"
                    " document from this caller. Send values as variables, or use a saved query.",
                )
            # The traceback would keep the parser's frames, and all its tokens, alive.
            error = error.with_traceback(None)
            error.__context__ = None
            size = _BYTES_PER_SYNTAX_ERROR + _BYTES_PER_CHARACTER * len(query)
            return PreparedDocument(None, (error,), False, {}, size, over_budget)
        errors = [_clear(error) for error in validate(self.graphql_schema, document, self.rules)]
        survey = _DocumentSurvey()
        visit(document, survey)
        operations = {
            (d.name.value if d.name else None): d.operation
            for d in document.definitions
            if isinstance(d, OperationDefinitionNode)
        }
        size = (
            _BYTES_PER_DOCUMENT
            + _BYTES_PER_TOKEN_OR_NODE * (_count_tokens(document) + survey.nodes)
            + _BYTES_PER_CHARACTER * len(query)
        )
        return PreparedDocument(
            document, tuple(errors), survey.uses_introspection, operations, size
        )


def _count_tokens(document: DocumentNode) -> int:
    token = document.loc.start_token if document.loc else None
    count = 0
    while token is not None:
        count += 1
        token = token.next
    return count


def _clear(error: GraphQLError) -> GraphQLError:
    """graphql-core says only "Validation aborted." when a document costs too much to check."""
    if isinstance(error, ValidationAbortedError) and "error limit" not in error.message:
        return GraphQLError(
            "The document is too costly to validate (validation aborted):"
            " use fewer repeated fields and fragments."
        )
    return error

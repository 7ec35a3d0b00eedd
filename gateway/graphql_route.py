"""POST/GET /graphql: GraphQL over HTTP with cached parsing and validation, roles and error masking.

The hot path of every page view, so it is lean on purpose: a query string is parsed and
validated once (bounded LRU) and then executed directly by graphql-core against the Strawberry
schema; authentication results are cached too (gateway.auth).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import orjson
import strawberry
from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    parse,
    specified_rules,
    validate,
)
from graphql import execute as graphql_execute
from graphql.language import FieldNode, visit
from graphql.language.visitor import Visitor
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter
from strawberry.http.ides import get_graphql_ide_html

from gateway import webhooks
from gateway.auth import Authenticator
from gateway.compiled import execution
from gateway.compiled.plan import Operation, compile_operation
from gateway.logs import actor_var
from gateway.runtime import Runtime
from schema.context import AuthError, BadUserInput, Context, Principal, forbidden

log = logging.getLogger("gateway.graphql")

MAX_DEPTH = 10
MAX_ALIASES = 30
MAX_TOKENS = 2_000
# One string literal is one token, so tokens alone do not bound a document's size, nor what
# the document cache holds: 500 entries of at most 20 KB.
MAX_QUERY_BYTES = 20_000
DOCUMENT_CACHE_SIZE = 500
MASKED_MESSAGE = "Unexpected error."


@dataclass(frozen=True)
class PreparedDocument:
    """A query string parsed and validated once; what execution and role checks need of it."""

    document: DocumentNode | None
    errors: tuple[GraphQLError, ...]
    uses_introspection: bool
    operation_types: Mapping[str | None, OperationType]
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


@dataclass(frozen=True)
class GraphQLRequest:
    query: str | None
    variables: dict[str, Any] | None
    operation_name: str | None
    document_id: str | None


class SavedQueryError(Exception):
    """A saved query that does not validate against the schema."""


class RequestError(Exception):
    """The HTTP request itself is unusable (4xx before any GraphQL runs)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Executor = Literal["compiled", "graphql-core", "both"]


class GraphQLRoute:
    def __init__(
        self,
        schema: strawberry.Schema,
        runtime: Runtime,
        authenticator: Authenticator,
        saved_queries: Mapping[str, str] | None = None,
        executor: Executor = "compiled",
    ) -> None:
        self.schema = schema
        # "both" (tests): every compiled answer is checked against graphql-core's.
        self.executor = executor
        self.runtime = runtime
        self.authenticator = authenticator
        self.documents = DocumentCache(schema)
        self.saved_queries = dict(saved_queries or {})
        for query_id, query in self.saved_queries.items():
            # Checked at start-up: a saved query the schema no longer accepts stops the process.
            prepared = self.documents.get(query)
            if prepared.errors:
                raise SavedQueryError(f"saved query {query_id}: {prepared.errors[0].message}")
        self.graphiql_html = get_graphql_ide_html(graphql_ide="graphiql")

    async def handle(self, request: Request) -> Response:
        request_id: str = request.state.request_id
        if request.method == "GET" and _wants_html(request):
            return await self.graphiql(request, request_id)
        try:
            gql = await self.read_request(request)
        except RequestError as error:
            return _json(
                {"errors": [_error_body(str(error), "BAD_REQUEST", request_id)]}, error.status
            )
        try:
            principal = await self.authenticator.authenticate(request.headers.get("authorization"))
        except AuthError as error:
            return _json({"errors": [_error_body(str(error), error.code, request_id)]})
        actor_var.set(principal.name if principal else None)

        query = gql.query
        if gql.document_id is not None:
            query = self.saved_queries.get(gql.document_id)
            if query is None:
                return _json(
                    {
                        "errors": [
                            _error_body(
                                "Unknown saved query id", "PERSISTED_QUERY_NOT_FOUND", request_id
                            )
                        ]
                    },
                    404,
                )
        elif principal is not None and principal.role == "dashboard":
            return self.refuse(forbidden("Dashboard keys may run saved queries only"), request_id)
        if not query:
            return _json(
                {"errors": [_error_body("No query given", "BAD_REQUEST", request_id)]}, 400
            )
        if len(query) > MAX_QUERY_BYTES:
            message = f"Query longer than {MAX_QUERY_BYTES} characters: use variables"
            return _json({"errors": [_error_body(message, "BAD_REQUEST", request_id)]}, 400)

        prepared = self.documents.get(query)
        if prepared.errors or prepared.document is None:
            staff = principal is not None and principal.is_staff
            errors = [_graphql_error(e, request_id, suggestions=staff) for e in prepared.errors]
            return _json({"errors": errors})
        if prepared.uses_introspection and (principal is None or not principal.is_staff):
            return self.refuse(forbidden("Introspection is for staff keys"), request_id)
        operation = _pick_operation(prepared, gql.operation_name)
        if operation is None:
            return _json(
                {
                    "errors": [
                        _error_body("Unknown or ambiguous operationName", "BAD_REQUEST", request_id)
                    ]
                },
                400,
            )
        if request.method == "GET" and operation != OperationType.QUERY:
            return _json(
                {"errors": [_error_body("Mutations need POST", "BAD_REQUEST", request_id)]},
                405,
                headers={"Allow": "POST"},
            )

        context = self.context(request, request_id, principal)
        compiled = None
        if operation == OperationType.QUERY and self.executor != "graphql-core":
            compiled = await self.run_compiled(prepared, gql, context)
            if compiled is not None and self.executor == "compiled":
                return _json({"data": compiled}, headers=_cache_headers(request, gql))
        result = graphql_execute(
            self.schema._schema,
            prepared.document,
            context_value=context,
            variable_values=gql.variables,
            operation_name=gql.operation_name,
        )
        if not isinstance(result, ExecutionResult):
            result = await result
        if compiled is not None and (
            result.errors or orjson.dumps(compiled) != orjson.dumps(result.data)
        ):
            # Compared as bytes: key order is part of the answer too.
            raise AssertionError(f"compiled {compiled!r} != graphql-core {result.formatted!r}")
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [_graphql_error(e, request_id) for e in result.errors]
        return _json(body, headers=None if result.errors else _cache_headers(request, gql))

    async def run_compiled(
        self, prepared: PreparedDocument, gql: GraphQLRequest, context: Context
    ) -> dict[str, Any] | None:
        """The compiled answer, or None when graphql-core is to answer (see gateway.compiled)."""
        plan = prepared.plan(self.schema, gql.operation_name)
        if plan is None:
            return None
        try:
            return await execution.execute(plan, context, gql.variables)
        except Exception:
            if self.executor == "both":
                raise
            log.exception("compiled plan failed; graphql-core answers instead")
            return None

    def context(self, request: Request, request_id: str, principal: Principal | None) -> Context:
        runtime = self.runtime
        return Context(
            db=runtime.db,
            catalog=runtime.catalog,
            clock=runtime.clock,
            request_id=request_id,
            principal=principal,
            app_base_url=runtime.settings.app_base_url,
            accept_language=request.headers.get("accept-language"),
            stripe=getattr(runtime, "stripe", None),
            analytics_events=runtime.settings.analytics_events,
            replay_stripe_event=partial(webhooks.replay_stripe_event, runtime),
        )

    def refuse(self, error: AuthError, request_id: str) -> Response:
        return _json({"data": None, "errors": [_error_body(str(error), error.code, request_id)]})

    async def graphiql(self, request: Request, request_id: str) -> Response:
        """GraphiQL for staff keys only; browsers are asked for the key as a Basic password."""
        challenge = {"WWW-Authenticate": 'Basic realm="entitlements gateway (API key)"'}
        try:
            principal = await self.authenticator.authenticate(request.headers.get("authorization"))
        except AuthError:
            principal = None
        if principal is None:
            return HTMLResponse("An API key is required (as the password).", 401, challenge)
        if not principal.is_staff:
            return HTMLResponse("GraphiQL is for staff keys.", 403)
        return HTMLResponse(self.graphiql_html)

    async def read_request(self, request: Request) -> GraphQLRequest:
        if request.method == "GET":
            params = request.query_params
            raw_variables = params.get("variables")
            return GraphQLRequest(
                query=params.get("query"),
                variables=_variables(raw_variables),
                operation_name=params.get("operationName"),
                document_id=params.get("id"),
            )
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("application/json", "application/graphql-response+json"):
            raise RequestError(415, "Send application/json")
        try:
            data = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise RequestError(400, "The body is not valid JSON") from None
        if not isinstance(data, dict):
            raise RequestError(400, "The body must be one JSON object (batching is off)")
        query, name, doc_id = data.get("query"), data.get("operationName"), data.get("id")
        for field, value in (("query", query), ("operationName", name), ("id", doc_id)):
            if value is not None and not isinstance(value, str):
                raise RequestError(400, f"{field} must be a string")
        return GraphQLRequest(
            query=query,
            variables=_variables(data.get("variables")),
            operation_name=name,
            document_id=doc_id,
        )


def _variables(raw: Any) -> dict[str, Any] | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            raise RequestError(400, "variables is not valid JSON") from None
    if not isinstance(raw, dict):
        raise RequestError(400, "variables must be a JSON object")
    return raw


def _cache_headers(request: Request, gql: GraphQLRequest) -> dict[str, str] | None:
    if request.method == "GET" and gql.document_id is not None:
        # Saved dashboard queries by GET may be cached by the browser or a private proxy.
        return {"Cache-Control": "private, max-age=30", "Vary": "Authorization"}
    return None


def _pick_operation(prepared: PreparedDocument, name: str | None) -> OperationType | None:
    operations = prepared.operation_types
    if name is not None:
        return operations.get(name)
    if len(operations) == 1:
        return next(iter(operations.values()))
    return None


def _wants_html(request: Request) -> bool:
    params = request.query_params
    if "query" in params or "id" in params:
        return False
    return "text/html" in request.headers.get("accept", "")


_SUGGESTION = re.compile(r"\s*Did you mean .*$", re.DOTALL)


def _error_body(message: str, code: str, request_id: str) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code, "requestId": request_id}}


def _graphql_error(
    error: GraphQLError, request_id: str, *, suggestions: bool = True
) -> dict[str, Any]:
    """The error as the client sees it: ours keep their code; anything unexpected is masked."""
    original = error.original_error
    if original is None:
        code = "GRAPHQL_VALIDATION_FAILED" if error.nodes else "GRAPHQL_PARSE_FAILED"
        body = error.formatted
        body["extensions"] = {**(body.get("extensions") or {}), "code": code}
        if not suggestions:
            # "Did you mean 'grantCredits'?" would hand out the schema introspection withholds.
            body["message"] = _SUGGESTION.sub("", body["message"]).rstrip()
    elif isinstance(original, AuthError):
        body = {"message": str(original), "path": error.path, "extensions": {"code": original.code}}
    elif isinstance(original, BadUserInput):
        body = {
            "message": str(original),
            "path": error.path,
            "extensions": {"code": "BAD_USER_INPUT"},
        }
    elif isinstance(original, GraphQLError):
        # graphql-core's own coercion errors (bad variable values) are safe to show.
        body = error.formatted
        body["extensions"] = {"code": "BAD_USER_INPUT"}
    else:
        log.error("unhandled error in %s", error.path, exc_info=original)
        body = {
            "message": MASKED_MESSAGE,
            "path": error.path,
            "extensions": {"code": "INTERNAL_SERVER_ERROR"},
        }
    body["extensions"]["requestId"] = request_id
    if body.get("path") is None:
        body.pop("path", None)
    return body


def _json(
    body: dict[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    # orjson: serializing the answer with the json module cost more than running a compiled plan.
    return Response(
        orjson.dumps(body),
        status,
        headers=dict(headers) if headers else None,
        media_type="application/json",
    )

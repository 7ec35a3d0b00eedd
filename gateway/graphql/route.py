"""POST/GET /graphql: cached documents, roles, execution by graphql-core, masked errors.

The hot path of every page view, so it is lean on purpose: a query string is parsed and
validated once (gateway.graphql.documents) and then executed directly by graphql-core against
the Strawberry schema; authentication results are cached too (gateway.auth).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import orjson
import strawberry
from graphql import ExecutionResult, OperationType
from graphql import execute as graphql_execute
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from gateway import graphiql, media_types
from gateway.auth import Authenticator
from gateway.compiled import execution
from gateway.db import DatabaseUnavailable
from gateway.failures import RETRY_AFTER_SECONDS
from gateway.graphql.documents import (
    MAX_QUERY_BYTES,
    PUBLIC_MAX_TOKENS,
    STAFF_MAX_TOKENS,
    DocumentCache,
    PreparedDocument,
)
from gateway.graphql.errors import error_body, graphql_error, json_response
from gateway.graphql.persisted import PersistedQueries, sha256_hex
from gateway.graphql.requests import (
    GraphQLRequest,
    HTTPRequest,
    RequestError,
    read_request,
    wants_html,
)
from gateway.graphql.throttle import DocumentThrottle
from gateway.logs import actor_var
from gateway.prometheus import OperationLabels
from gateway.runtime import Runtime
from gateway.tracing import name_operation
from schema.context import AuthError, Context, Principal, forbidden

log = logging.getLogger("gateway.graphql")


class SavedQueryError(Exception):
    """A saved query that does not validate against the schema."""


Executor = Literal["compiled", "graphql-core", "both"]


class GraphQLRoute:
    def __init__(
        self,
        schema: strawberry.Schema,
        runtime: Runtime,
        authenticator: Authenticator,
        saved_queries: Mapping[str, str] | None = None,
        executor: Executor = "compiled",
        registered_documents: Mapping[str, str] | None = None,
    ) -> None:
        self.schema = schema
        # "both" (tests): every compiled answer is checked against graphql-core's; for a
        # mutation, graphql-core answers from the outcome of the write the compiled run made.
        self.executor = executor
        self.runtime = runtime
        self.authenticator = authenticator
        self.documents = DocumentCache(schema)
        self.throttle = DocumentThrottle()
        self.saved_queries = dict(saved_queries or {})
        # Kept apart from the cache: dashboards' documents are never evicted nor throttled.
        self.saved_documents: dict[str, PreparedDocument] = {}
        self.operation_labels = OperationLabels()
        # Automatic persisted queries; registered documents are kept apart, like saved ones.
        self.persisted = PersistedQueries()
        self.registered_documents: dict[str, PreparedDocument] = {}
        for query_id, query in self.saved_queries.items():
            self.saved_documents[query_id] = self.prepare_at_start(f"saved query {query_id}", query)
        for name, query in (registered_documents or {}).items():
            prepared = self.prepare_at_start(f"registered document {name}", query)
            self.registered_documents[sha256_hex(query)] = prepared

    def prepare_at_start(self, what: str, query: str) -> PreparedDocument:
        """Parsed, validated and compiled now: one the schema refuses stops the process."""
        prepared = self.documents.prepare(query)
        if prepared.errors:
            raise SavedQueryError(f"{what}: {prepared.errors[0].message}")
        for name, operation in prepared.operation_types.items():
            self.operation_labels.label(name)
            if operation != OperationType.SUBSCRIPTION:
                prepared.plan(self.schema, name)
        return prepared

    async def handle(self, request: HTTPRequest) -> Response:
        """The answer to POST (from the lane, gateway.graphql.lane) or GET (from Starlette)."""
        request_id: str = request.state.request_id
        if isinstance(request, Request) and request.method == "GET" and wants_html(request):
            return await self.graphiql(request, request_id)
        media_type = media_types.negotiate(request.headers.get("accept"))
        if media_type is None:
            return media_types.not_acceptable(request_id)
        response = await self.respond(request, request_id)
        if isinstance(response, media_types.GraphQLResponse):
            return response.answer_as(media_type)
        return response

    async def respond(self, request: HTTPRequest, request_id: str) -> Response:
        try:
            gql = await read_request(request)
        except RequestError as error:
            return json_response(
                {"errors": [error_body(str(error), "BAD_REQUEST", request_id)]}, error.status
            )
        try:
            principal = await self.authenticator.authenticate(request.headers.get("authorization"))
        except AuthError as error:
            return json_response({"errors": [error_body(str(error), error.code, request_id)]})
        actor_var.set(principal.name if principal else None)

        staff = principal is not None and principal.is_staff
        if gql.document_id is not None:
            prepared = self.saved_documents.get(gql.document_id)
            if prepared is None:
                return json_response(
                    {
                        "errors": [
                            error_body(
                                "Unknown saved query id", "PERSISTED_QUERY_NOT_FOUND", request_id
                            )
                        ]
                    },
                    404,
                )
        elif principal is not None and principal.role == "dashboard":
            return self.refuse(forbidden("Dashboard keys may run saved queries only"), request_id)
        elif gql.persisted_hash in self.registered_documents and (
            gql.query is None or sha256_hex(gql.query) == gql.persisted_hash
        ):
            prepared = self.registered_documents[gql.persisted_hash]
        else:
            query = gql.query
            if gql.persisted_hash is not None:
                if not query:
                    query = self.persisted.get(gql.persisted_hash)
                    if query is None:
                        # Apollo's clients resend with the document on this exact message.
                        return json_response(
                            {
                                "errors": [
                                    error_body(
                                        "PersistedQueryNotFound",
                                        "PERSISTED_QUERY_NOT_FOUND",
                                        request_id,
                                    )
                                ]
                            }
                        )
                elif sha256_hex(query) != gql.persisted_hash:
                    message = "provided sha does not match query"
                    return json_response(
                        {"errors": [error_body(message, "BAD_REQUEST", request_id)]}, 400
                    )
            if not query:
                return json_response(
                    {"errors": [error_body("No query given", "BAD_REQUEST", request_id)]}, 400
                )
            if len(query) > MAX_QUERY_BYTES:
                message = f"Query longer than {MAX_QUERY_BYTES} characters: use variables"
                return json_response(
                    {"errors": [error_body(message, "BAD_REQUEST", request_id)]}, 400
                )
            # A new document, also one sent to register a hash, is within the caller's budgets.
            prepared_or_refusal = self.prepare(request, query, staff=staff)
            if isinstance(prepared_or_refusal, Response):
                return prepared_or_refusal
            prepared = prepared_or_refusal
            if gql.persisted_hash is not None and not prepared.errors and not prepared.over_budget:
                self.persisted.register(gql.persisted_hash, query)

        if prepared.errors or prepared.document is None:
            errors = [
                graphql_error(e, request_id, suggestions=staff, code=prepared.error_code)
                for e in prepared.errors
            ]
            return json_response({"errors": errors})
        if prepared.uses_introspection and not staff:
            return self.refuse(forbidden("Introspection is for staff keys"), request_id)
        operation = pick_operation(prepared, gql.operation_name)
        if operation is None:
            return json_response(
                {
                    "errors": [
                        error_body("Unknown or ambiguous operationName", "BAD_REQUEST", request_id)
                    ]
                },
                400,
            )
        if operation == OperationType.SUBSCRIPTION:
            message = "Subscriptions run over a websocket (graphql-transport-ws) at /graphql"
            return json_response({"errors": [error_body(message, "BAD_REQUEST", request_id)]}, 400)
        if request.method == "GET" and operation != OperationType.QUERY:
            return json_response(
                {"errors": [error_body("Mutations need POST", "BAD_REQUEST", request_id)]},
                405,
                headers={"Allow": "POST"},
            )

        operation_label = self.operation_labels.label(
            gql.operation_name or next(iter(prepared.operation_types), None)
        )
        request.state.graphql_operation = operation_label
        name_operation(operation_label)
        context = self.context(request, request_id, principal)
        if gql.document_id is not None:
            context.db = self.runtime.dashboard_db
        compiled = None
        # Queries, and the writes of gateway.compiled.writes; a write made by the compiled
        # executor is never made again: graphql-core, if it answers, answers with its outcome.
        if self.executor != "graphql-core":
            compiled = await self.run_compiled(prepared, gql, context)
            if compiled is not None and self.executor == "compiled":
                return json_response({"data": compiled}, headers=_cache_headers(request, gql))
        result = graphql_execute(
            self.schema._schema,
            prepared.document,
            context_value=context,
            variable_values=gql.variables,
            operation_name=gql.operation_name,
            hide_suggestions=not staff,
        )
        if not isinstance(result, ExecutionResult):
            result = await result
        if compiled is not None and (
            result.errors or orjson.dumps(compiled) != orjson.dumps(result.data)
        ):
            # Compared as bytes: key order is part of the answer too.
            raise AssertionError(f"compiled {compiled!r} != graphql-core {result.formatted!r}")
        body: dict[str, Any] = {"data": result.data}
        headers: dict[str, str] | None = None
        status = 200
        if result.errors:
            body["errors"] = [
                graphql_error(e, request_id, suggestions=staff) for e in result.errors
            ]
            if any(isinstance(e.original_error, DatabaseUnavailable) for e in result.errors):
                status, headers = 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}
        else:
            headers = _cache_headers(request, gql)
        return json_response(body, status, headers=headers)

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

    def prepare(
        self, request: HTTPRequest, query: str, *, staff: bool
    ) -> PreparedDocument | Response:
        """The cached document, or a new one within the caller's budgets (429 past them)."""
        prepared = self.documents.cached(query)
        if prepared is not None:
            return prepared
        if staff:
            return self.documents.add(query, max_tokens=STAFF_MAX_TOKENS)
        address = request.client.host if request.client else "unknown"
        wait = self.throttle.admit(address)
        if wait is not None:
            message = (
                "Too many new documents: send documents the gateway has seen, or retry after"
                f" {wait} s"
            )
            return json_response(
                {"errors": [error_body(message, "RATE_LIMITED", request.state.request_id)]},
                429,
                headers={"Retry-After": str(wait)},
            )
        return self.documents.add(query, max_tokens=PUBLIC_MAX_TOKENS)

    def context(
        self, request: HTTPRequest, request_id: str, principal: Principal | None
    ) -> Context:
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
        )

    def refuse(self, error: AuthError, request_id: str) -> Response:
        return json_response(
            {"data": None, "errors": [error_body(str(error), error.code, request_id)]}
        )

    async def graphiql(self, request: Request, request_id: str) -> Response:
        """GraphiQL for staff keys only; browsers are asked for the key as a Basic password,
        which the page then puts in its headers editor."""
        challenge = {"WWW-Authenticate": 'Basic realm="entitlements gateway (API key)"'}
        try:
            principal = await self.authenticator.authenticate(request.headers.get("authorization"))
        except AuthError:
            principal = None
        if principal is None:
            return HTMLResponse("An API key is required (as the password).", 401, challenge)
        if not principal.is_staff:
            return HTMLResponse("GraphiQL is for staff keys.", 403)
        api_key = graphiql.api_key_of(request.headers.get("authorization"))
        if api_key is None:
            return HTMLResponse("An API key is required (as the password).", 401, challenge)
        return graphiql.page(api_key)


def _cache_headers(request: HTTPRequest, gql: GraphQLRequest) -> dict[str, str] | None:
    if request.method == "GET" and gql.document_id is not None:
        # Saved dashboard queries by GET may be cached by the browser or a private proxy.
        return {"Cache-Control": "private, max-age=30", "Vary": "Authorization"}
    return None


def pick_operation(prepared: PreparedDocument, name: str | None) -> OperationType | None:
    operations = prepared.operation_types
    if name is not None:
        return operations.get(name)
    if len(operations) == 1:
        return next(iter(operations.values()))
    return None

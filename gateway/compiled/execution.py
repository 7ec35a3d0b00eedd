"""The executor: runs a compiled tree level by level, one batch per field and level, no resolvers.

For each field of a selection it reads the values of every source of that level at once (a
plain row read, or one statement for all of them), then completes the objects of the next
level together, so statements per request do not grow with list lengths.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import asyncpg
from graphql.execution.values import VariableValues, get_argument_values, get_variable_values
from sqlalchemy.exc import SQLAlchemyError

from gateway.compiled.plan import FieldPlan, Operation, Shape
from gateway.compiled.resolver import Kind
from gateway.compiled.run import Fallback, Run
from resolvers.unit_of_work import DatabaseUnreachable
from schema.arguments import argument_problem
from schema.context import BadUserInput, Context

_NO_VARIABLES = VariableValues({}, {})


async def execute(
    operation: Operation, context: Context, raw_variables: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The `data` of the operation, or None: answer this request with graphql-core instead."""
    variables = _NO_VARIABLES
    if operation.variable_definitions:
        coerced = get_variable_values(
            operation.schema, operation.variable_definitions, raw_variables or {}
        )
        if isinstance(coerced, list):
            return None  # bad variable values: graphql-core words the errors
        variables = coerced
    tree = operation.tree(variables)
    data: dict[str, Any] = {}
    run = Run(context, on_loop=operation.reads_on_loop)
    try:
        await _complete(run, tree, [None], [data], variables)
    except (Fallback, BadUserInput):
        return None
    except (
        SQLAlchemyError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        sqlite3.Error,
        OSError,
        DatabaseUnreachable,
    ):
        # An infrastructure fault: graphql-core meets it again (a write's, from the context:
        # see gateway.compiled.writes), then masks and logs it, or answers 503.
        return None
    finally:
        await run.close()
    return data


async def _complete(
    run: Run,
    plans: list[FieldPlan],
    sources: list[Any],
    outputs: list[dict[str, Any]],
    variables: VariableValues,
) -> None:
    # Each field is set on every output before the next field: keys keep the document's order.
    for plan in plans:
        key = plan.key
        shape = plan.shape
        if shape is Shape.TYPENAME:
            for output in outputs:
                output[key] = plan.typename
            continue
        if plan.roles is not None:
            principal = run.context.principal
            if principal is None or principal.role not in plan.roles:
                raise Fallback("refused: graphql-core gives the error")
        if plan.bind is None:
            args = plan.args
            if plan.refused:
                raise Fallback("refused text: graphql-core gives the error")
        else:
            args = get_argument_values(*plan.bind, variables)
            if args and argument_problem(args) is not None:
                raise Fallback("refused text: graphql-core gives the error")
        fn = plan.fn
        kind = plan.kind
        if kind is Kind.SOURCE:
            values = [fn(s) for s in sources]
        elif kind is Kind.WITH_RUN:
            values = [fn(s, run, args) for s in sources]
        else:
            values = await fn(run, sources, args)
        if shape is Shape.LEAF:
            if plan.non_null and None in values:
                raise Fallback("null in a non-null field")
            for output, value in zip(outputs, values, strict=True):
                output[key] = value
            continue
        children: list[Any] = []
        child_outputs: list[dict[str, Any]] = []
        for output, value in zip(outputs, values, strict=True):
            if value is None:
                if plan.non_null:
                    raise Fallback("null in a non-null field")
                output[key] = None
            elif shape is Shape.OBJECT:
                child: dict[str, Any] = {}
                output[key] = child
                children.append(value)
                child_outputs.append(child)
            else:
                items = [{} for _ in value]
                output[key] = items
                children.extend(value)
                child_outputs.extend(items)
        if not children:
            continue
        if plan.variants is None:
            assert plan.children is not None
            await _complete(run, plan.children, children, child_outputs, variables)
            continue
        # A union: the values of each member type are completed together, one batch per
        # field and member, so statements still do not grow with the list.
        assert plan.type_of is not None
        members: dict[str, tuple[list[Any], list[dict[str, Any]]]] = {}
        for value, child_output in zip(children, child_outputs, strict=True):
            values_of, outputs_of = members.setdefault(plan.type_of(value), ([], []))
            values_of.append(value)
            outputs_of.append(child_output)
        for member, (values_of, outputs_of) in members.items():
            await _complete(run, plan.variants[member], values_of, outputs_of, variables)

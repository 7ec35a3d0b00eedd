"""The compiled Mutation root fields: each calls the one write its Strawberry resolver calls.

The role is checked by the executor before the field runs, and arguments are converted into the
Strawberry input object exactly as Strawberry converts them (gateway.compiled.inputs, built once
per field), so the write sees what it would see under graphql-core. Its outcome is remembered
on the context under the field's response key: should graphql-core answer the request after all
(a Fallback while the answer is completed), the Strawberry resolver answers with that outcome
instead of writing again (schema.results.written_once).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from graphql import GraphQLField, GraphQLSchema
from strawberry.types.arguments import convert_arguments

from gateway.compiled.inputs import compile_arguments
from gateway.compiled.resolver import Args, Resolver, batch
from gateway.compiled.run import Run
from schema.context import Context
from schema.entitlement_mutations import run_record_usage, run_set_entitlement_override
from schema.holds import run_release_hold, run_reserve_credits, run_settle_hold
from schema.mutation import run_consume_credits, run_grant_credits, run_set_tier

Write = Callable[[Context, Any], Awaitable[Any]]

# The Mutation fields answered compiled, by GraphQL name: each takes one `input`.
WRITES: dict[str, Write] = {
    "consumeCredits": run_consume_credits,
    "grantCredits": run_grant_credits,
    "setTier": run_set_tier,
    "reserveCredits": run_reserve_credits,
    "settleHold": run_settle_hold,
    "releaseHold": run_release_hold,
    "recordUsage": run_record_usage,
    "setEntitlementOverride": run_set_entitlement_override,
}

WRITE_ARGUMENTS: dict[tuple[str, str], frozenset[str]] = {
    ("Mutation", name): frozenset({"input"}) for name in WRITES
}


def write_resolver(schema: GraphQLSchema, field: GraphQLField, name: str, key: str) -> Resolver:
    """The root field `name`, answered as `key`: its write, made once, remembered."""
    write = WRITES[name]
    strawberry_schema = schema._strawberry_schema  # type: ignore[attr-defined]
    arguments = field.extensions["strawberry-definition"].arguments
    registry = strawberry_schema.schema_converter.scalar_registry
    config = strawberry_schema.config
    convert = compile_arguments(arguments, registry, config)

    async def run_write(run: Run, _roots: list[None], args: Args) -> list[Any]:
        if convert is not None:
            converted = convert(args)
        else:
            converted = convert_arguments(
                dict(args), arguments, scalar_registry=registry, config=config
            )
        context = run.context
        try:
            outcome = await write(context, converted["input"])
        except Exception as error:
            # graphql-core answers this request: it meets the same error, not a second write.
            context.remember_written(key, error)
            raise
        context.remember_written(key, outcome)
        # The answer is read after the write, as graphql-core's resolvers read the clock then.
        run.now = context.clock()
        return [outcome]

    return batch(run_write)

"""The GraphQL schema, assembled in one place."""

from __future__ import annotations

import strawberry
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types

from schema.arguments import guard_arguments
from schema.holds import HoldMutation
from schema.mutation import Mutation
from schema.outbox import OutboxMutation, OutboxQuery
from schema.query import Query
from schema.subscription import Subscription


def build_schema() -> strawberry.Schema:
    query = merge_types("Query", (Query, OutboxQuery))
    mutation = merge_types("Mutation", (Mutation, HoldMutation, OutboxMutation))
    built = strawberry.Schema(
        query=query, mutation=mutation, subscription=Subscription, config=StrawberryConfig()
    )
    guard_arguments(built._schema)
    return built


schema = build_schema()

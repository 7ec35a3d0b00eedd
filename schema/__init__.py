"""The GraphQL schema, assembled in one place."""

from __future__ import annotations

import strawberry
from strawberry.schema.config import StrawberryConfig

from schema.arguments import guard_arguments
from schema.mutation import Mutation
from schema.query import Query


def build_schema() -> strawberry.Schema:
    built = strawberry.Schema(query=Query, mutation=Mutation, config=StrawberryConfig())
    guard_arguments(built._schema)
    return built


schema = build_schema()

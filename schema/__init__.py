"""The GraphQL schema, assembled in one place."""

from __future__ import annotations

import strawberry
from strawberry.schema.config import StrawberryConfig

from schema.mutation import Mutation
from schema.query import Query


def build_schema() -> strawberry.Schema:
    return strawberry.Schema(query=Query, mutation=Mutation, config=StrawberryConfig())


schema = build_schema()

"""The GraphQL schema, assembled in one place."""

from __future__ import annotations

import strawberry
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types

from schema.holds import HoldMutation
from schema.mutation import Mutation
from schema.query import Query


def build_schema() -> strawberry.Schema:
    mutation = merge_types("Mutation", (Mutation, HoldMutation))
    return strawberry.Schema(query=Query, mutation=mutation, config=StrawberryConfig())


schema = build_schema()

"""GraphQL types of the catalog's plans: a tier with its copy in one locale, and its prices."""

from __future__ import annotations

import strawberry
from strawberry import Private

from resolvers.catalog.model import Tier


@strawberry.type
class Money:
    amount: int = strawberry.field(description="Minor units (cents).")
    currency: str


@strawberry.type(description="A tier of the catalog, with copy in the requested locale.")
class Plan:
    tier: Private[Tier]
    locale: Private[str]

    @strawberry.field
    def code(self) -> str:
        return self.tier.code

    @strawberry.field
    def rank(self) -> int:
        return self.tier.rank

    @strawberry.field
    def name(self) -> str:
        return self.tier.copy[self.locale].name

    @strawberry.field
    def monthly_credits(self) -> int:
        return self.tier.monthly_credits

    @strawberry.field
    def trial_days(self) -> int:
        return self.tier.trial_days

    @strawberry.field(description="Feature codes, for gating in the frontend.")
    def features(self) -> list[str]:
        return list(self.tier.features)

    @strawberry.field(description="Feature descriptions in the requested locale.")
    def feature_descriptions(self) -> list[str]:
        return list(self.tier.copy[self.locale].features)

    @strawberry.field
    def prices(self) -> list[Money]:
        return [Money(amount=a, currency=c) for c, a in self.tier.prices.items()]

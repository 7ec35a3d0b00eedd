"""Typed error values of the mutation result unions: one GraphQL type per domain failure.

Each type names the domain failure it shows (`@shows`); `from_failure` looks the type up, so a
failure without a type is a TypeError here and a failing completeness test in tests/schema.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

import strawberry

from resolvers import errors as domain

E = TypeVar("E", bound="type[Error]")
Convert = Callable[[Any], Any]
# The GraphQL error type of each domain failure class, and how its fields are read.
SHOWN_AS: dict[type[domain.Failure], tuple[type[Error], dict[str, Convert]]] = {}


def shows(failure: type[domain.Failure], **converted: Convert) -> Callable[[E], E]:
    """Register a GraphQL error type as the view of `failure`.

    Fields are the failure's attributes of the same name; `converted` reads the others
    (renamed ones, ids that GraphQL shows as ID, statuses shown as enums).
    """

    def register(error_type: E) -> E:
        SHOWN_AS[failure] = (error_type, converted)
        return error_type

    return register


def _id(value: int | None) -> strawberry.ID | None:
    return None if value is None else strawberry.ID(str(value))


@strawberry.interface(description="An expected failure of a mutation, returned as a value.")
class Error:
    message: str
    code: str


@shows(domain.UserNotFound, user_id=lambda f: _id(f.user_id))
@strawberry.type
class UserNotFound(Error):
    email: str | None
    user_id: strawberry.ID | None


@shows(domain.InsufficientCredits)
@strawberry.type
class InsufficientCredits(Error):
    available: int
    requested: int


@shows(domain.UnknownTier, known_tiers=lambda f: list(f.known))
@strawberry.type
class UnknownTier(Error):
    tier: str
    known_tiers: list[str]


@shows(domain.InvalidInput)
@strawberry.type
class InvalidInput(Error):
    field: str


@shows(domain.IdempotencyConflict)
@strawberry.type
class IdempotencyConflict(Error):
    idempotency_key: str


@strawberry.enum
class HoldStatus(Enum):
    ACTIVE = "active"
    SETTLED = "settled"
    RELEASED = "released"
    EXPIRED = "expired"


@shows(domain.DeliveryNotFound)
@strawberry.type
class DeliveryNotFound(Error):
    delivery_id: str


@shows(domain.HoldNotFound)
@strawberry.type
class HoldNotFound(Error):
    hold_id: str


@shows(
    domain.HoldNotActive, hold_id=lambda f: _id(f.hold_id), status=lambda f: HoldStatus(f.status)
)
@strawberry.type
class HoldNotActive(Error):
    hold_id: strawberry.ID
    status: HoldStatus


@shows(domain.HoldExpired, hold_id=lambda f: _id(f.hold_id))
@strawberry.type
class HoldExpired(Error):
    hold_id: strawberry.ID
    expires_at: datetime


@shows(domain.PaymentsNotConfigured)
@strawberry.type
class PaymentsNotConfigured(Error):
    pass


@shows(domain.PaymentProviderError)
@strawberry.type
class PaymentProviderError(Error):
    provider_message: str


@shows(domain.NoStripeCustomer, user_id=lambda f: _id(f.user_id))
@strawberry.type
class NoStripeCustomer(Error):
    user_id: strawberry.ID


@shows(domain.PaymentNotFound)
@strawberry.type
class PaymentNotFound(Error):
    ref: str


@shows(domain.StripeEventNotFound)
@strawberry.type
class WebhookEventNotFound(Error):
    event_id: str


@shows(domain.StripeEventFailed)
@strawberry.type
class WebhookEventFailed(Error):
    event_id: str
    reason: str


@shows(domain.UnknownFeature, known_features=lambda f: list(f.known))
@strawberry.type
class UnknownFeature(Error):
    feature: str
    known_features: list[str]


@shows(domain.NoAccess)
@strawberry.type
class NoAccess(Error):
    feature: str


@shows(domain.LimitExceeded)
@strawberry.type
class LimitExceeded(Error):
    feature: str
    limit: int
    usage: int
    requested: int


def from_failure(failure: domain.Failure) -> Error:
    """The GraphQL value of a domain failure."""
    shown = SHOWN_AS.get(type(failure))
    if shown is None:
        raise TypeError(f"no GraphQL error type for {type(failure).__name__}")
    error_type, converted = shown
    values = {
        field.name: converted[field.name](failure)
        if field.name in converted
        else getattr(failure, field.name)
        for field in dataclasses.fields(error_type)
    }
    return error_type(**values)

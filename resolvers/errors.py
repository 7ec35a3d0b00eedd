"""Domain failures: expected outcomes returned as values, each with a stable code and a message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Failure:
    """Base of every expected failure. A transaction whose work returns one is rolled back."""

    code: ClassVar[str] = "FAILURE"

    @property
    def message(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class UserNotFound(Failure):
    code: ClassVar[str] = "USER_NOT_FOUND"
    email: str | None = None
    user_id: int | None = None

    @property
    def message(self) -> str:
        who = self.email if self.email is not None else f"id {self.user_id}"
        return f"No user with {'email ' if self.email is not None else ''}{who}"


@dataclass(frozen=True)
class InsufficientCredits(Failure):
    code: ClassVar[str] = "INSUFFICIENT_CREDITS"
    available: int
    requested: int

    @property
    def message(self) -> str:
        return f"Only {self.available} credits available, {self.requested} requested"


@dataclass(frozen=True)
class UnknownTier(Failure):
    code: ClassVar[str] = "UNKNOWN_TIER"
    tier: str
    known: tuple[str, ...]

    @property
    def message(self) -> str:
        return f"Unknown tier {self.tier!r}; known tiers: {', '.join(self.known)}"


@dataclass(frozen=True)
class InvalidInput(Failure):
    code: ClassVar[str] = "INVALID_INPUT"
    field: str
    reason: str

    @property
    def message(self) -> str:
        return f"{self.field}: {self.reason}"


@dataclass(frozen=True)
class IdempotencyConflict(Failure):
    code: ClassVar[str] = "IDEMPOTENCY_CONFLICT"
    idempotency_key: str

    @property
    def message(self) -> str:
        return f"Idempotency key {self.idempotency_key!r} was already used with other arguments"

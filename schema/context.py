"""What every resolver sees as `info.context`: who is asking, the database, the catalog, loaders."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from resolvers.catalog.model import Catalog
from resolvers.kinds import Role
from resolvers.ledger.entries import Actor
from resolvers.ledger.statements import Statements
from resolvers.loaders import Loaders

T = TypeVar("T")

VIEWER = Role.VIEWER


class Wakeups(Protocol):
    """A subscription's wake-ups: each says that its user may have changed."""

    async def wait(self) -> None: ...


class LiveChanges(Protocol):
    """Where subscriptions wait for committed changes (gateway.live.feed.LiveFeed is one)."""

    def admit(self) -> None: ...

    def watch(self, user_id: int) -> AbstractAsyncContextManager[Wakeups]: ...


class UnitOfWork(Protocol):
    """The database as the schema needs it (gateway.db.Database is one)."""

    def read(self) -> AbstractAsyncContextManager[AsyncSession]: ...

    def connect(self) -> AbstractAsyncContextManager[AsyncConnection]: ...

    async def write(
        self,
        work: Callable[[AsyncSession], Awaitable[T]],
        alone: Callable[[Statements], Awaitable[T | None]] | None = None,
    ) -> T: ...


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: an end user (role `viewer`) or an API key's role."""

    role: str
    name: str
    user_id: int | None = None

    @property
    def is_staff(self) -> bool:
        return self.role != VIEWER


class AuthError(Exception):
    """Authentication or authorization refused; reaches the client with its code, unmasked."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def unauthenticated(message: str = "Authentication required") -> AuthError:
    return AuthError(message, "UNAUTHENTICATED")


def forbidden(message: str) -> AuthError:
    return AuthError(message, "FORBIDDEN")


class BadUserInput(Exception):
    """A malformed argument outside a mutation's input (page sizes, cursors); not masked."""


@dataclass
class Context:
    db: UnitOfWork
    catalog: Catalog
    clock: Callable[[], datetime]
    request_id: str
    principal: Principal | None
    app_base_url: str
    accept_language: str | None = None
    stripe: Any = None
    analytics_events: tuple[str, ...] = ()
    # Subscriptions (websocket connections only): where to wait for changes.
    live: LiveChanges | None = None
    _loaders: Loaders | None = field(default=None, repr=False)
    # What a mutation root field's write gave (a result, or the exception it raised), by response
    # key, when the compiled executor made the write: graphql-core answers with it, not again.
    _written: dict[str, Any] | None = field(default=None, repr=False)

    def forget_loaded(self) -> None:
        """A long-lived (websocket) context reads afresh after this: its loaders cache."""
        self._loaders = None

    @property
    def loaders(self) -> Loaders:
        if self._loaders is None:
            self._loaders = Loaders(self.db.connect)
        return self._loaders

    def remember_written(self, key: str, outcome: Any) -> None:
        if self._written is None:
            self._written = {}
        self._written[key] = outcome

    def written(self, key: str) -> Any | None:
        """What the write of the root field answered as `key` gave, None when not made yet."""
        return None if self._written is None else self._written.get(key)

    def actor(self, source: str) -> Actor:
        name = self.principal.name if self.principal else "anonymous"
        return Actor(name=name, source=source, request_id=self.request_id)

    def spend_actor(self) -> Actor:
        """Who spends: the AI backend's service key is usage, every other staff key support."""
        role = self.principal.role if self.principal else None
        return self.actor("usage" if role == Role.SERVICE else "support")

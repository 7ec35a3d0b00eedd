"""What a running gateway holds: settings, the database, the catalog, the clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import stripe
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.clock import utc_now
from gateway.db import Database, ReplicaReads
from gateway.settings import Settings
from resolvers.catalog.model import Catalog, load_catalog
from resolvers.outbox.events import OutboxConfig
from resolvers.outbox.triggers import write_outgoing_events


@dataclass
class Runtime:
    settings: Settings
    db: Database
    catalog: Catalog
    clock: Callable[[], datetime] = field(default=utc_now)
    # Set when STRIPE_API_KEY is: Checkout, Portal, fetching subscriptions (async calls only).
    stripe: stripe.StripeClient | None = None
    stripe_http: stripe.HTTPClient | None = None  # the client's connection pool, closed with us
    # DATABASE_READ_URL: the replica saved dashboard queries read from.
    read_db: Database | None = None

    def __post_init__(self) -> None:
        if self.outbox.is_enabled:
            self.db.before_commit = self._write_outgoing_events

    @property
    def outbox(self) -> OutboxConfig:
        return OutboxConfig(
            endpoints=self.settings.outgoing_webhook_urls,
            expiring_soon_days=self.settings.credits_expiring_soon_days,
        )

    async def _write_outgoing_events(
        self, session: AsyncSession, changes: list[dict[str, Any]]
    ) -> None:
        await write_outgoing_events(
            session, changes, config=self.outbox, catalog=self.catalog, now=self.clock()
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, pool_size: int = 20) -> Runtime:
        """Build it; a bad catalog raises CatalogError naming the entry."""
        catalog = load_catalog(settings.catalog_path)
        stripe_client, stripe_http = build_stripe_client(settings)
        return cls(
            settings=settings,
            db=Database(settings.database_url, pool_size=pool_size),
            catalog=catalog,
            stripe=stripe_client,
            stripe_http=stripe_http,
            read_db=(
                Database(settings.database_read_url, pool_size=pool_size)
                if settings.database_read_url
                else None
            ),
        )

    @property
    def dashboard_db(self) -> Database | ReplicaReads:
        """Where saved dashboard queries run: the read replica when one is configured."""
        return self.db if self.read_db is None else ReplicaReads(self.db, self.read_db)

    async def close(self) -> None:
        if self.stripe_http is not None:
            await self.stripe_http.close_async()
        if self.read_db is not None:
            await self.read_db.dispose()
        await self.db.dispose()


STRIPE_TIMEOUT_SECONDS = 20


def build_stripe_client(
    settings: Settings,
) -> tuple[stripe.StripeClient, stripe.HTTPClient] | tuple[None, None]:
    """The Stripe client and its httpx pool (async calls only); none without an API key.

    STRIPE_API_BASE points the client elsewhere (tests: a fake Stripe on loopback).
    """
    if not settings.stripe_api_key:
        return None, None
    # A short timeout: a checkout on SQLite holds the write lock while Stripe answers.
    http = stripe.HTTPXClient(timeout=STRIPE_TIMEOUT_SECONDS)
    client = stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else {},
        http_client=http,
    )
    return client, http

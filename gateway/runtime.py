"""What a running gateway holds: settings, the database, the catalog, the clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.db import Database
from gateway.settings import Settings
from resolvers.catalog import Catalog, load_catalog


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Runtime:
    settings: Settings
    db: Database
    catalog: Catalog
    clock: Callable[[], datetime] = field(default=utc_now)

    @classmethod
    def from_settings(cls, settings: Settings, *, pool_size: int = 10) -> Runtime:
        """Build it; a bad catalog raises CatalogError naming the entry."""
        catalog = load_catalog(settings.catalog_path)
        return cls(
            settings=settings,
            db=Database(settings.database_url, pool_size=pool_size),
            catalog=catalog,
        )

    async def close(self) -> None:
        await self.db.dispose()

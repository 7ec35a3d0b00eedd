"""Settings a deployment needs: where to listen, plain database URLs, a read replica."""

from __future__ import annotations

import pytest

from gateway.settings import Settings


@pytest.mark.parametrize(
    ("given", "used"),
    [
        (
            "postgresql://gw:pw@db:5432/entitlements",
            "postgresql+asyncpg://gw:pw@db:5432/entitlements",
        ),
        (
            "postgres://gw:pw@db/entitlements?ssl=require",
            "postgresql+asyncpg://gw:pw@db/entitlements?ssl=require",
        ),
        ("sqlite:///./data/entitlements.db", "sqlite+aiosqlite:///./data/entitlements.db"),
        ("sqlite:////var/lib/entitlements.db", "sqlite+aiosqlite:////var/lib/entitlements.db"),
        ("postgresql+asyncpg://gw@db/e", "postgresql+asyncpg://gw@db/e"),
        ("sqlite+aiosqlite:///e.db", "sqlite+aiosqlite:///e.db"),
    ],
)
def test_plain_database_urls_get_the_async_driver(given: str, used: str) -> None:
    settings = Settings.from_env({"DATABASE_URL": given, "DATABASE_READ_URL": given})
    assert settings.database_url == used
    assert settings.database_read_url == used


def test_listen_address_and_read_replica_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.database_read_url is None


def test_host_and_port_are_read() -> None:
    settings = Settings.from_env({"HOST": "0.0.0.0", "PORT": "9090"})
    assert (settings.host, settings.port) == ("0.0.0.0", 9090)

"""Settings read from the environment; a bad value stops start-up with one line naming it."""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./entitlements.db"
DEFAULT_APP_BASE_URL = "http://localhost:5173"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "resolvers" / "catalog" / "catalog.toml"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("json", "text")
# RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (256 bits).
MIN_JWT_SECRET_BYTES = 32
DEFAULT_EXPIRING_SOON_DAYS = 7
_METRICS_TOKEN = re.compile(r"[!-~]{16,256}")


class SettingsError(Exception):
    """A setting that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    catalog_path: Path = DEFAULT_CATALOG
    app_base_url: str = DEFAULT_APP_BASE_URL
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    stripe_api_key: str | None = None
    stripe_webhook_secrets: tuple[str, ...] = ()
    stripe_api_base: str | None = None
    log_level: str = "INFO"
    log_format: str = "json"
    analytics_events: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    jwt_jwks_url: str | None = None
    # GET /metrics shows business counters: with a token set, only Prometheus may read them.
    metrics_token: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    database_read_url: str | None = None
    # GraphQL subscriptions (gateway.live): bounds per websocket and per process, how long a
    # connection without a subscription stays open, and SQLite's cross-process poll.
    subscriptions_per_connection: int = 10
    subscriptions_per_process: int = 10_000
    subscription_idle_seconds: float = 60.0
    subscription_poll_seconds: float = 0.5
    # Outgoing webhooks (Standard Webhooks): none configured, no events are written.
    outgoing_webhook_urls: tuple[str, ...] = ()
    outgoing_webhook_secret: str | None = None
    credits_expiring_soon_days: int = DEFAULT_EXPIRING_SOON_DAYS

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        database_url = async_database_url(
            "DATABASE_URL", get("DATABASE_URL") or DEFAULT_DATABASE_URL
        )
        database_read_url = get("DATABASE_READ_URL")
        if database_read_url:
            database_read_url = async_database_url("DATABASE_READ_URL", database_read_url)
        host, port = _listen_address(get("HOST"), get("PORT"))

        catalog_path = Path(get("ENTITLEMENTS_CATALOG") or DEFAULT_CATALOG)
        if not catalog_path.is_file():
            raise SettingsError(f"ENTITLEMENTS_CATALOG: no such file: {catalog_path}")

        app_base_url = (get("APP_BASE_URL") or DEFAULT_APP_BASE_URL).rstrip("/")
        _require_http_url("APP_BASE_URL", app_base_url)

        jwt_secret = get("JWT_SECRET")
        if jwt_secret and len(jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise SettingsError(
                f"JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes"
                f" (got {len(jwt_secret.encode())})"
            )
        jwt_jwks_url = get("JWT_JWKS_URL")
        if jwt_jwks_url:
            _require_http_url("JWT_JWKS_URL", jwt_jwks_url)

        jwt_public_key = get("JWT_PUBLIC_KEY")
        if jwt_public_key:
            jwt_public_key = _load_public_key(jwt_public_key)

        secrets = tuple(s.strip() for s in (get("STRIPE_WEBHOOK_SECRET") or "").split(",") if s)
        for secret in secrets:
            if not secret.startswith("whsec_"):
                raise SettingsError("STRIPE_WEBHOOK_SECRET entries must start with whsec_")

        stripe_api_base = get("STRIPE_API_BASE")
        if stripe_api_base:
            stripe_api_base = stripe_api_base.rstrip("/")
            _require_http_url("STRIPE_API_BASE", stripe_api_base)

        log_level = (get("LOG_LEVEL") or "INFO").upper()
        if log_level not in LOG_LEVELS:
            raise SettingsError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        log_format = (get("LOG_FORMAT") or "json").lower()
        if log_format not in LOG_FORMATS:
            raise SettingsError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")

        analytics_events = tuple(
            n.strip() for n in (get("ENTITLEMENTS_ANALYTICS_EVENTS") or "").split(",") if n.strip()
        )
        for name in analytics_events:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
                raise SettingsError(
                    f"ENTITLEMENTS_ANALYTICS_EVENTS: {name[:64]!r} is not a snake_case event name"
                )

        cors_origins = tuple(
            _cors_origin(o) for o in (get("CORS_ORIGINS") or "").split(",") if o.strip()
        )
        metrics_token = get("METRICS_TOKEN")
        if metrics_token is not None and not _METRICS_TOKEN.fullmatch(metrics_token):
            raise SettingsError("METRICS_TOKEN must be 16 to 256 visible ASCII characters")

        outgoing_urls, outgoing_secret = _outgoing_webhooks(
            get("OUTGOING_WEBHOOK_URLS"), get("OUTGOING_WEBHOOK_SECRET")
        )
        expiring_days = get("CREDITS_EXPIRING_SOON_DAYS") or str(DEFAULT_EXPIRING_SOON_DAYS)
        if not expiring_days.isdigit() or not 1 <= int(expiring_days) <= 365:
            raise SettingsError(
                f"CREDITS_EXPIRING_SOON_DAYS must be a number of days from 1 to 365"
                f" (got {expiring_days[:16]!r})"
            )

        return cls(
            subscriptions_per_connection=int(
                _number(get, "SUBSCRIPTIONS_PER_CONNECTION", 10, 1, 1000, whole=True)
            ),
            subscriptions_per_process=int(
                _number(get, "SUBSCRIPTIONS_PER_PROCESS", 10_000, 1, 1_000_000, whole=True)
            ),
            subscription_idle_seconds=_number(get, "SUBSCRIPTION_IDLE_SECONDS", 60, 1, 86_400),
            subscription_poll_seconds=_number(get, "SUBSCRIPTION_POLL_SECONDS", 0.5, 0.05, 10),
            database_url=database_url,
            catalog_path=catalog_path,
            app_base_url=app_base_url,
            jwt_secret=jwt_secret,
            jwt_public_key=jwt_public_key,
            jwt_audience=get("JWT_AUDIENCE"),
            jwt_issuer=get("JWT_ISSUER"),
            stripe_api_key=get("STRIPE_API_KEY"),
            stripe_webhook_secrets=secrets,
            stripe_api_base=stripe_api_base,
            log_level=log_level,
            log_format=log_format,
            analytics_events=analytics_events,
            cors_origins=cors_origins,
            jwt_jwks_url=jwt_jwks_url,
            metrics_token=metrics_token,
            host=host,
            port=port,
            database_read_url=database_read_url,
            outgoing_webhook_urls=outgoing_urls,
            outgoing_webhook_secret=outgoing_secret,
            credits_expiring_soon_days=int(expiring_days),
        )


# The URLs operators and platforms hand out name no driver; the gateway runs on the async ones.
ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def async_database_url(name: str, url: str) -> str:
    """`url` with the async driver named: `postgresql://` and `sqlite:///` are accepted too."""
    scheme, separator, rest = url.partition("://")
    driver = ASYNC_DRIVERS.get(scheme.lower()) if separator else None
    if driver is None:
        # Only a scheme is shown: the rest may carry a password.
        shown = scheme if separator and re.fullmatch(r"[A-Za-z0-9+.\-]{1,40}", scheme) else "?"
        raise SettingsError(
            f"{name} must start with postgresql://, sqlite:///, postgresql+asyncpg:// or"
            f" sqlite+aiosqlite:/// (got {shown}://…)"
        )
    return f"{driver}://{rest}"


def _number(
    get: Callable[[str], str | None],
    name: str,
    default: float,
    low: float,
    high: float,
    *,
    whole: bool = False,
) -> float:
    value = get(name)
    if value is None:
        return default
    try:
        number = int(value) if whole else float(value)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        kind = "a whole number" if whole else "a number"
        raise SettingsError(f"{name} must be {kind} from {low:g} to {high:g} (got {value[:16]!r})")
    return number


def _listen_address(host: str | None, port: str | None) -> tuple[str, int]:
    host = host or DEFAULT_HOST
    if any(c.isspace() or c in "/?#@" for c in host):
        raise SettingsError(f"HOST must be an address or a host name (got {host[:64]!r})")
    if port is None:
        return host, DEFAULT_PORT
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SettingsError(f"PORT must be a number from 1 to 65535 (got {port[:16]!r})")
    return host, int(port)


def _outgoing_webhooks(urls: str | None, secret: str | None) -> tuple[tuple[str, ...], str | None]:
    endpoints = tuple(dict.fromkeys(u.strip() for u in (urls or "").split(",") if u.strip()))
    for endpoint in endpoints:
        _require_http_url("OUTGOING_WEBHOOK_URLS", endpoint)
        if len(endpoint) > 1000:
            raise SettingsError("OUTGOING_WEBHOOK_URLS entries must be at most 1000 characters")
    if not endpoints:
        return (), secret
    if secret is None:
        raise SettingsError("OUTGOING_WEBHOOK_SECRET is required when OUTGOING_WEBHOOK_URLS is set")
    if not secret.startswith("whsec_") or not _is_base64(secret.removeprefix("whsec_")):
        raise SettingsError("OUTGOING_WEBHOOK_SECRET must be whsec_ followed by base64 (24+ bytes)")
    return endpoints, secret


def _is_base64(value: str) -> bool:
    try:
        return len(base64.b64decode(value, validate=True)) >= 24
    except (binascii.Error, ValueError):
        return False


def _load_public_key(value: str) -> str:
    """The PEM itself, or read from the path given; it must load as a public key."""
    if "-----BEGIN" not in value:
        try:
            value = Path(value).read_text()
        except (OSError, UnicodeDecodeError):
            raise SettingsError(
                "JWT_PUBLIC_KEY must be a PEM public key or a path to one"
            ) from None
    try:
        serialization.load_pem_public_key(value.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SettingsError("JWT_PUBLIC_KEY is not a PEM public key that can be loaded") from None
    return value


def _require_http_url(name: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"{name} must be an http(s) URL (got {value!r})")


def _cors_origin(value: str) -> str:
    """One browser origin as browsers send it: scheme://host[:port], no path, no slash."""
    origin = value.strip().rstrip("/")
    parts = urlsplit(origin)
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or parts.path
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        raise SettingsError(
            f"CORS_ORIGINS entries must be origins like https://app.example.com (got {origin!r})"
        )
    return origin

"""Settings from the environment: the documented defaults, and one line naming a bad variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.settings import Settings, SettingsError

SHIPPED_CATALOG = Path(__file__).resolve().parents[2] / "resolvers" / "catalog" / "catalog.toml"
# A real key: settings load JWT_PUBLIC_KEY at start-up, so a broken one stops the process.
PUBLIC_KEY = (
    rsa.generate_private_key(public_exponent=65537, key_size=2048)
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
LONG_SECRET = "s3cret-that-is-at-least-32-bytes-long"


def test_an_empty_environment_gives_the_documented_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite+aiosqlite:///./entitlements.db"
    assert settings.catalog_path.resolve() == SHIPPED_CATALOG
    assert settings.app_base_url == "http://localhost:5173"
    assert (settings.jwt_secret, settings.jwt_public_key) == (None, None)
    assert (settings.jwt_audience, settings.jwt_issuer) == (None, None)
    assert settings.stripe_api_key is None
    assert settings.stripe_webhook_secrets == ()
    assert settings.stripe_api_base is None
    assert (settings.cors_origins, settings.jwt_jwks_url) == ((), None)
    assert (settings.log_level, settings.log_format) == ("INFO", "json")
    assert settings.is_sqlite


def test_blank_values_count_as_unset() -> None:
    blank = {name: "  " for name in ("DATABASE_URL", "APP_BASE_URL", "LOG_LEVEL", "JWT_SECRET")}
    assert Settings.from_env(blank) == Settings.from_env({})


def test_every_variable_is_read(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(SHIPPED_CATALOG.read_text())
    pem = tmp_path / "jwt.pem"
    pem.write_text(PUBLIC_KEY)
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql+asyncpg://gw:pw@db:5432/entitlements",
            "ENTITLEMENTS_CATALOG": str(catalog),
            "APP_BASE_URL": "https://app.example.com/",
            "JWT_SECRET": LONG_SECRET,
            "JWT_JWKS_URL": "https://auth.example.com/.well-known/jwks.json",
            "CORS_ORIGINS": "https://app.example.com/, http://localhost:5173",
            "JWT_PUBLIC_KEY": str(pem),
            "JWT_AUDIENCE": "lucy",
            "JWT_ISSUER": "https://auth.example.com",
            "STRIPE_API_KEY": "sk_test_123",
            "STRIPE_WEBHOOK_SECRET": "whsec_new, whsec_old",
            "STRIPE_API_BASE": "http://127.0.0.1:12111/",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "TEXT",
        }
    )
    assert settings == Settings(
        database_url="postgresql+asyncpg://gw:pw@db:5432/entitlements",
        catalog_path=catalog,
        app_base_url="https://app.example.com",
        jwt_secret=LONG_SECRET,
        jwt_jwks_url="https://auth.example.com/.well-known/jwks.json",
        cors_origins=("https://app.example.com", "http://localhost:5173"),
        jwt_public_key=PUBLIC_KEY,
        jwt_audience="lucy",
        jwt_issuer="https://auth.example.com",
        stripe_api_key="sk_test_123",
        stripe_webhook_secrets=("whsec_new", "whsec_old"),
        stripe_api_base="http://127.0.0.1:12111",
        log_level="DEBUG",
        log_format="text",
    )
    assert not settings.is_sqlite


def test_a_pem_itself_is_accepted_as_jwt_public_key() -> None:
    assert Settings.from_env({"JWT_PUBLIC_KEY": PUBLIC_KEY}).jwt_public_key == PUBLIC_KEY.strip()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://x"),
        ("DATABASE_URL", "postgresql+psycopg2://gw:hunter2@db/entitlements"),
        ("DATABASE_URL", "gw:hunter2@db/entitlements"),
        ("DATABASE_READ_URL", "mysql://gw:hunter2@replica/entitlements"),
        ("HOST", "0.0.0.0/0"),
        ("PORT", "http"),
        ("PORT", "70000"),
        ("ENTITLEMENTS_CATALOG", "/nonexistent/catalog.toml"),
        ("APP_BASE_URL", "localhost:5173"),
        ("APP_BASE_URL", "ftp://files.example.com"),
        ("JWT_PUBLIC_KEY", "/nonexistent/key.pem"),
        ("STRIPE_WEBHOOK_SECRET", "sk_live_oops"),
        ("STRIPE_WEBHOOK_SECRET", "whsec_good,not_a_secret"),
        ("STRIPE_API_BASE", "api.stripe.com"),
        ("LOG_LEVEL", "LOUD"),
        ("LOG_FORMAT", "xml"),
        ("JWT_SECRET", "s3cret"),
        ("JWT_SECRET", "x" * 31),
        ("JWT_JWKS_URL", "auth.example.com/jwks.json"),
        ("CORS_ORIGINS", "*"),
        ("CORS_ORIGINS", "https://app.example.com/pricing"),
        ("CORS_ORIGINS", "https://app.example.com,app.example.com"),
        ("METRICS_TOKEN", "too-short"),
        ("METRICS_TOKEN", "spaces are not allowed in it"),
        ("OUTGOING_WEBHOOK_URLS", "hooks.example.com/in"),
        ("CREDITS_EXPIRING_SOON_DAYS", "0"),
        ("CREDITS_EXPIRING_SOON_DAYS", "a week"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({name: value})
    message = str(raised.value)
    assert name in message
    assert "\n" not in message
    # A database password never reaches a log line or a terminal.
    assert "hunter2" not in message


def test_metrics_token_is_read() -> None:
    assert Settings.from_env({}).metrics_token is None
    token = "prom-scrape-0123456789abcdef"
    assert Settings.from_env({"METRICS_TOKEN": f" {token} "}).metrics_token == token


def test_an_unusable_jwt_public_key_is_a_settings_error_not_a_crash() -> None:
    pkcs1 = "-----BEGIN RSA PUBLIC KEY-----\n" + "A" * 400 + "\n-----END RSA PUBLIC KEY-----\n"
    with pytest.raises(SettingsError, match="JWT_PUBLIC_KEY"):
        Settings.from_env({"JWT_PUBLIC_KEY": pkcs1})


def test_a_jwt_secret_of_32_bytes_is_enough() -> None:
    assert Settings.from_env({"JWT_SECRET": "x" * 32}).jwt_secret == "x" * 32
    # Bytes, not characters: 11 three-byte characters are 33 bytes.
    assert Settings.from_env({"JWT_SECRET": "€" * 11}).jwt_secret == "€" * 11


def test_outgoing_webhooks_need_a_whsec_secret_and_are_read() -> None:
    urls = "https://a.example.com/hooks, https://b.example.com/hooks"
    for secret in (None, "sk_live_oops", "whsec_!!!", "whsec_c2hvcnQ="):
        env = {
            "OUTGOING_WEBHOOK_URLS": urls,
            **({"OUTGOING_WEBHOOK_SECRET": secret} if secret else {}),
        }
        with pytest.raises(SettingsError, match=r"^OUTGOING_WEBHOOK_SECRET") as raised:
            Settings.from_env(env)
        assert "\n" not in str(raised.value)
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    settings = Settings.from_env(
        {
            "OUTGOING_WEBHOOK_URLS": urls,
            "OUTGOING_WEBHOOK_SECRET": secret,
            "CREDITS_EXPIRING_SOON_DAYS": "3",
        }
    )
    assert settings.outgoing_webhook_urls == (
        "https://a.example.com/hooks",
        "https://b.example.com/hooks",
    )
    assert settings.outgoing_webhook_secret == secret
    assert settings.credits_expiring_soon_days == 3
    assert Settings.from_env({}).outgoing_webhook_urls == ()

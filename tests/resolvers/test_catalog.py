"""The catalog: the shipped file loads, and each kind of bad entry stops start-up naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import DEFAULT_CATALOG
from resolvers.catalog.model import CatalogError, load_catalog

REPO = Path(__file__).resolve().parents[2]

# Small but complete: two locales, two currencies, a free and a paid tier, one credit pack.
GOOD = """
locales = ["en", "nl"]
currencies = ["EUR", "USD"]
default_currency = "EUR"

[copy.en]
upgrade_cta = "Upgrade"
current_cta = "Current plan"
manage_cta = "Manage subscription"
downgrade_cta = "Downgrade"
signup_cta = "Sign up"
buy_credits_cta = "Buy AI credits"
per_month = "per month"
credits_per_month = "{credits} AI credits per month"

[copy.nl]
upgrade_cta = "Upgraden"
current_cta = "Huidig abonnement"
manage_cta = "Abonnement beheren"
downgrade_cta = "Downgraden"
signup_cta = "Aanmelden"
buy_credits_cta = "Koop AI-credits"
per_month = "per maand"
credits_per_month = "{credits} AI-credits per maand"

[[tiers]]
code = "free"
rank = 0
monthly_credits = 10
prices = { EUR = 0, USD = 0 }
copy.en = { name = "Free", features = ["Search"] }
copy.nl = { name = "Gratis", features = ["Zoeken"] }

[[tiers]]
code = "pro"
rank = 10
monthly_credits = 100
prices = { EUR = 1900, USD = 2100 }
stripe_price_ids = { EUR = "price_pro_eur", USD = "price_pro_usd" }
copy.en = { name = "Pro", features = ["Search", "AI assistant"] }
copy.nl = { name = "Pro", features = ["Zoeken", "AI-assistent"] }

[[credit_packs]]
code = "credits_100"
credits = 100
prices = { EUR = 500, USD = 550 }
stripe_price_ids = { EUR = "price_c100_eur", USD = "price_c100_usd" }
copy.en = { name = "100 AI credits" }
copy.nl = { name = "100 AI-credits" }
"""

DUPLICATE_PACK = """
[[credit_packs]]
code = "credits_100"
credits = 200
prices = { EUR = 900, USD = 990 }
stripe_price_ids = { EUR = "price_c200_eur", USD = "price_c200_usd" }
copy.en = { name = "200 AI credits" }
copy.nl = { name = "200 AI-credits" }
"""


def write_catalog(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text, encoding="utf-8")
    return path


def broken(old: str, new: str) -> str:
    assert GOOD.count(old) == 1, f"the test's edit must hit exactly one place: {old!r}"
    return GOOD.replace(old, new)


def test_shipped_catalog_loads_with_three_locales_and_dutch_credit_cta() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    assert catalog.locales == ("en", "nl", "de")
    assert catalog.tier_codes == ("free", "pro", "team")
    assert catalog.default_tier.code == "free"
    assert catalog.copy["nl"]["buy_credits_cta"] == "Koop AI-credits"
    assert [p.code for p in catalog.credit_packs] == ["credits_100", "credits_500", "credits_2000"]
    assert catalog.tier_for_price("price_pro_monthly_usd") == catalog.tier("pro")
    assert catalog.pack_for_price("price_credits_500_eur") == catalog.credit_pack("credits_500")


def test_the_small_test_catalog_is_itself_valid(tmp_path: Path) -> None:
    catalog = load_catalog(write_catalog(tmp_path, GOOD))
    assert catalog.tier_codes == ("free", "pro")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            broken('copy.nl = { name = "Pro", ', 'copy.de = { name = "Pro", '),
            "tier pro: missing translation for locale 'nl'",
            id="tier-name-missing-in-a-locale",
        ),
        pytest.param(
            broken('copy.nl = { name = "100 AI-credits" }', ""),
            "credit pack credits_100: missing translation for locale 'nl'",
            id="pack-name-missing-in-a-locale",
        ),
        pytest.param(
            broken('buy_credits_cta = "Koop AI-credits"\n', ""),
            "catalog copy.nl: missing translation 'buy_credits_cta'",
            id="cta-copy-missing",
        ),
        pytest.param(
            broken('features = ["Zoeken", "AI-assistent"]', 'features = ["Zoeken"]'),
            "tier pro: missing translation of features for locale 'nl'",
            id="feature-missing-in-a-locale",
        ),
        pytest.param(
            broken('"{credits} AI-credits per maand"', '"AI-credits per maand"'),
            "catalog copy.nl.credits_per_month: must contain {credits}",
            id="allowance-template-loses-its-placeholder",
        ),
        pytest.param(
            broken('code = "pro"', 'code = "free"'),
            "tier free: duplicate",
            id="duplicate-tier-code",
        ),
        pytest.param(
            GOOD + DUPLICATE_PACK,
            "credit pack credits_100: duplicate",
            id="duplicate-pack-code",
        ),
        pytest.param(
            broken('currencies = ["EUR", "USD"]', 'currencies = ["EUR", "USD", "XYZ"]'),
            "catalog: unknown currency 'XYZ'",
            id="unknown-catalog-currency",
        ),
        pytest.param(
            broken(
                "prices = { EUR = 1900, USD = 2100 }",
                "prices = { EUR = 1900, USD = 2100, GBP = 1 }",
            ),
            "tier pro: unknown currency 'GBP'",
            id="price-in-a-currency-the-catalog-does-not-sell-in",
        ),
        pytest.param(
            broken("prices = { EUR = 1900, USD = 2100 }", "prices = { EUR = 1900 }"),
            "tier pro: no price in USD",
            id="price-missing-for-a-catalog-currency",
        ),
        pytest.param(
            broken('USD = "price_c100_usd"', 'USD = "price_pro_usd"'),
            "credit pack credits_100: Stripe price price_pro_usd is already used by tier pro",
            id="stripe-price-used-twice",
        ),
        pytest.param(
            broken('locales = ["en", "nl"]', 'locales = ["en", "nl", "xx"]'),
            "catalog: unknown locale 'xx'",
            id="unknown-locale",
        ),
        pytest.param(
            broken("rank = 10\n", "rank = 10\nlow_balance_threshold = -5\n"),
            "tier pro: low_balance_threshold must be a non-negative integer",
            id="negative-low-balance-threshold",
        ),
        pytest.param(
            broken("rank = 0\n", "rank = 20\n"),
            "tier pro: the lowest tier must be free",
            id="lowest-tier-is-paid",
        ),
    ],
)
def test_bad_catalog_is_refused_with_one_line_naming_the_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(CatalogError) as refused:
        load_catalog(write_catalog(tmp_path, text))
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_bad_catalog_stops_the_cli_with_one_line_on_stderr(tmp_path: Path) -> None:
    path = write_catalog(tmp_path, broken("prices = { EUR = 1900, USD = 2100 }", "prices = {}"))
    env = {
        **os.environ,
        "ENTITLEMENTS_CATALOG": str(path),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'never-opened.db'}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "user", "show", "someone@example.com"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: tier pro: prices must map currencies to amounts in minor units"
    ]

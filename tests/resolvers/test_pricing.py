"""Pricing cards: localized copy and prices, and the CTA each viewer gets on each card.

`pricing` is pure (no database), so these tests need no backend; users are plain table rows
that are never saved.
"""

from __future__ import annotations

import pytest

from gateway.settings import DEFAULT_CATALOG
from resolvers.catalog.model import Catalog, load_catalog
from resolvers.catalog.pricing import (
    CtaKind,
    Pricing,
    choose_currency,
    negotiate_locale,
    pricing,
)
from resolvers.errors import InvalidInput
from resolvers.models import User

BASE = "https://app.example.com"
NBSP = "\xa0"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(DEFAULT_CATALOG)


def page(catalog: Catalog, *, locale: str | None = "en", tier: str | None = None, **kw) -> Pricing:
    viewer = None if tier is None else User(email="v@example.com", tier=tier)
    return pricing(
        catalog=catalog, locale=locale, user=viewer, app_base_url=kw.pop("base", BASE), **kw
    )


def ctas(result: Pricing) -> dict[str, tuple[CtaKind, str | None]]:
    return {card.code: (card.cta.kind, card.cta.url) for card in result.tiers}


def test_anonymous_viewer_gets_sign_up_ctas_on_every_card(catalog: Catalog) -> None:
    result = page(catalog, locale="nl")
    assert ctas(result) == {
        "free": (CtaKind.SIGNUP, f"{BASE}/signup?tier=free"),
        "pro": (CtaKind.SIGNUP, f"{BASE}/signup?tier=pro"),
        "team": (CtaKind.SIGNUP, f"{BASE}/signup?tier=team"),
    }
    assert {card.cta.label for card in result.tiers} == {"Aanmelden"}
    assert all(card.upgrade_url is None and not card.is_current for card in result.tiers)
    pack = result.credit_packs[0]
    assert (pack.cta.kind, pack.cta.url) == (CtaKind.SIGNUP, f"{BASE}/signup?pack=credits_100")
    assert pack.buy_credits_url is None
    assert result.sidebar_cta.url == f"{BASE}/signup"


def test_free_viewer_is_offered_upgrades_and_credit_packs(catalog: Catalog) -> None:
    result = page(catalog, tier="free")
    assert ctas(result) == {
        "free": (CtaKind.CURRENT, None),
        "pro": (CtaKind.UPGRADE, f"{BASE}/billing/upgrade?tier=pro"),
        "team": (CtaKind.UPGRADE, f"{BASE}/billing/upgrade?tier=team"),
    }
    by_code = {card.code: card for card in result.tiers}
    assert by_code["pro"].upgrade_url == f"{BASE}/billing/upgrade?tier=pro"
    assert by_code["free"].is_current and by_code["free"].manage_url is None
    assert [p.buy_credits_url for p in result.credit_packs] == [
        f"{BASE}/billing/credits?pack=credits_100",
        f"{BASE}/billing/credits?pack=credits_500",
        f"{BASE}/billing/credits?pack=credits_2000",
    ]
    assert {p.cta.kind for p in result.credit_packs} == {CtaKind.BUY}
    # The sticky sidebar points at the next tier up.
    assert result.sidebar_cta.url == f"{BASE}/billing/upgrade?tier=pro"


def test_pro_viewer_manages_current_tier_and_downgrades_in_the_portal(catalog: Catalog) -> None:
    result = page(catalog, tier="pro")
    portal = f"{BASE}/billing/portal"
    assert ctas(result) == {
        "free": (CtaKind.DOWNGRADE, portal),
        "pro": (CtaKind.CURRENT, portal),
        "team": (CtaKind.UPGRADE, f"{BASE}/billing/upgrade?tier=team"),
    }
    assert [card.is_current for card in result.tiers] == [False, True, False]
    assert [card.manage_url for card in result.tiers] == [portal, portal, None]
    assert [card.cta.label for card in result.tiers] == ["Downgrade", "Current plan", "Upgrade"]


def test_top_tier_viewer_sidebar_sells_credits(catalog: Catalog) -> None:
    result = page(catalog, tier="team", locale="nl")
    assert all(card.upgrade_url is None for card in result.tiers)
    assert result.sidebar_cta.kind is CtaKind.BUY
    assert result.sidebar_cta.url == f"{BASE}/billing/credits"
    assert result.sidebar_cta.label == "Koop AI-credits"


def test_viewer_on_a_tier_no_longer_sold_is_sent_to_the_portal(catalog: Catalog) -> None:
    result = page(catalog, tier="legacy_gold")
    assert set(ctas(result).values()) == {(CtaKind.MANAGE, f"{BASE}/billing/portal")}
    assert all(card.upgrade_url is None for card in result.tiers)


def test_dutch_page_has_dutch_copy_prices_and_koop_ai_credits(catalog: Catalog) -> None:
    result = page(catalog, locale="nl", tier="free")
    pro = result.tiers[1]
    assert (result.locale, result.currency) == ("nl", "EUR")
    assert pro.name == "Pro"
    assert pro.price == f"€{NBSP}19,00"
    assert pro.per_month == "per maand"
    assert pro.allowance == "1.000 AI-credits per maand"
    assert pro.features == ("Alles van Gratis", "AI-assistent", "Exports")
    assert result.tiers[0].name == "Gratis"
    assert [p.cta.label for p in result.credit_packs] == ["Koop AI-credits"] * 3
    assert result.credit_packs[2].name == "2.000 AI-credits"


def test_german_and_english_pages_format_prices_their_own_way(catalog: Catalog) -> None:
    german = page(catalog, locale="de", tier="free")
    assert german.tiers[1].price == f"19,00{NBSP}€"
    assert german.tiers[2].allowance == "5.000 AI-Credits pro Monat"
    assert german.credit_packs[0].cta.label == "AI-Credits kaufen"
    english = page(catalog, locale="en", tier="free")
    assert (english.currency, english.tiers[1].price) == ("EUR", "€19.00")
    assert english.tiers[1].allowance == "1,000 AI credits per month"


def test_us_english_defaults_to_dollars_and_other_regions_to_the_catalog_default(
    catalog: Catalog,
) -> None:
    us = page(catalog, locale="en-US", tier="free")
    assert (us.locale, us.currency) == ("en-US", "USD")
    assert us.tiers[1].price == "$21.00"
    assert us.tiers[1].amount == 2100
    assert us.credit_packs[0].amount == 550
    # Sterling is not sold: the catalog's default currency applies.
    assert page(catalog, locale="en-GB").currency == "EUR"
    assert choose_currency(catalog, "de-CH") == "EUR"


def test_requested_currency_wins_and_an_unsold_one_is_invalid_input(catalog: Catalog) -> None:
    dollars = page(catalog, locale="nl", currency="usd")
    assert dollars.currency == "USD"
    assert dollars.tiers[1].price == f"US${NBSP}21,00"
    # Asked for yen or sterling, the page must not quietly quote euros or dollars instead.
    for locale, currency in (("en-US", "JPY"), ("nl", "JPY"), ("en-GB", "GBP"), ("nl", "")):
        refused = page(catalog, locale=locale, currency=currency)
        assert isinstance(refused, InvalidInput), refused
        assert refused.field == "currency"
        assert "EUR, USD" in refused.message


def test_unknown_locale_renders_english(catalog: Catalog) -> None:
    for locale in ("fr", "xx-YY", "", None, "<script>"):
        result = page(catalog, locale=locale)
        assert result.locale == "en"
        assert result.tiers[0].name == "Free"


def test_trailing_slash_on_the_base_url_does_not_double(catalog: Catalog) -> None:
    result = page(catalog, tier="free", base=f"{BASE}/")
    assert result.tiers[1].upgrade_url == f"{BASE}/billing/upgrade?tier=pro"


AVAILABLE = ("en", "nl", "de")


@pytest.mark.parametrize(
    ("argument", "header", "expected"),
    [
        pytest.param("nl", "de-DE,de;q=0.9", "nl", id="argument-beats-header"),
        pytest.param("nl-BE", None, "nl-BE", id="region-is-kept"),
        pytest.param("en_us", None, "en-US", id="underscore-and-case-normalized"),
        pytest.param("fr", "de-AT,en;q=0.5", "de-AT", id="unsold-argument-falls-to-header"),
        pytest.param(None, "fr-FR, en;q=0.4, nl;q=0.8", "nl", id="header-by-quality"),
        pytest.param(None, "nl;q=0, de", "de", id="q-zero-is-refused"),
        pytest.param(None, "fr, *;q=0.5", "en", id="wildcard-and-unsold-fall-back"),
        pytest.param(None, "nl;q=abc,de;q=nan", "en", id="malformed-qualities-ignored"),
        pytest.param(None, "", "en", id="nothing-given"),
        pytest.param("'; DROP TABLE users", None, "en", id="garbage-argument"),
    ],
)
def test_negotiate_locale(argument: str | None, header: str | None, expected: str) -> None:
    assert negotiate_locale(argument, header, AVAILABLE) == expected


@pytest.mark.parametrize(
    ("argument", "stored", "header", "expected"),
    [
        pytest.param(None, "nl", "de-DE,de;q=0.9", "nl", id="stored-beats-header"),
        pytest.param("de", "nl", "en", "de", id="argument-beats-stored"),
        pytest.param(None, "fr", "de-DE", "de-DE", id="unsold-stored-falls-to-header"),
        pytest.param(None, "nl_be", None, "nl-BE", id="stored-is-normalized"),
        pytest.param(None, None, "de", "de", id="no-stored-locale"),
    ],
)
def test_negotiate_locale_with_a_stored_locale(
    argument: str | None, stored: str | None, header: str | None, expected: str
) -> None:
    assert negotiate_locale(argument, header, AVAILABLE, stored=stored) == expected


def test_negotiated_locale_feeds_pricing(catalog: Catalog) -> None:
    locale = negotiate_locale(None, "nl-NL,nl;q=0.9,en;q=0.8", catalog.locales)
    result = page(catalog, locale=locale, tier="free")
    assert result.locale == "nl-NL"
    assert result.credit_packs[0].cta.label == "Koop AI-credits"
    assert result.tiers[1].price == f"€{NBSP}19,00"

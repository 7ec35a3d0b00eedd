"""Pricing: localized tier cards and credit packs, each with the call to action for the viewer.

Pure functions of the catalog, the viewer and a few request facts; nothing here touches the
database, so the GraphQL field, a CLI or a test call them the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from urllib.parse import urlencode

from babel import Locale, UnknownLocaleError
from babel import negotiate_locale as babel_negotiate_locale
from babel.numbers import (
    format_currency,
    format_decimal,
    get_currency_precision,
    get_territory_currencies,
)

from resolvers.catalog.model import Catalog, CreditPack, Tier
from resolvers.errors import InvalidInput
from resolvers.models import User

FALLBACK_LOCALE = "en"
# Enough for any real browser; the rest of a longer header is ignored rather than parsed.
MAX_ACCEPT_LANGUAGE_ENTRIES = 20
_LOCALE_TAG = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{1,8}){0,4}$")


class CtaKind(StrEnum):
    SIGNUP = "SIGNUP"
    UPGRADE = "UPGRADE"
    CURRENT = "CURRENT"
    DOWNGRADE = "DOWNGRADE"
    MANAGE = "MANAGE"
    BUY = "BUY"


@dataclass(frozen=True)
class Cta:
    kind: CtaKind
    label: str
    url: str | None  # None: nothing to follow, e.g. the free tier the viewer is on


@dataclass(frozen=True)
class EntitlementLine:
    """One thing a tier entitles to, as the card shows it: "100 PDF exports per month"."""

    feature: str
    text: str
    limit: int | None
    per: str | None  # "month" for metered features


@dataclass(frozen=True)
class TierCard:
    code: str
    rank: int
    name: str
    price: str  # formatted for the locale, e.g. "€ 19,00"
    amount: int  # minor units
    currency: str
    per_month: str
    monthly_credits: int
    allowance: str  # e.g. "1.000 AI-credits per maand"
    features: tuple[str, ...]
    entitlements: tuple[EntitlementLine, ...]  # in catalog order; only what the tier includes
    trial_days: int
    is_current: bool
    cta: Cta
    upgrade_url: str | None  # set when the CTA is an upgrade
    manage_url: str | None  # the billing portal, where the viewer's subscription changes


@dataclass(frozen=True)
class CreditPackCard:
    code: str
    name: str
    credits: int
    price: str
    amount: int
    currency: str
    cta: Cta
    buy_credits_url: str | None  # None for anonymous viewers: they sign up first


@dataclass(frozen=True)
class Pricing:
    locale: str  # the BCP 47 tag the page is rendered in, e.g. "nl" or "en-US"
    currency: str
    tiers: tuple[TierCard, ...]
    credit_packs: tuple[CreditPackCard, ...]
    sidebar_cta: Cta  # the sticky sidebar's single call to action; always present


@dataclass(frozen=True)
class _Links:
    base: str

    def upgrade(self, tier: str) -> str:
        return f"{self.base}/billing/upgrade?{urlencode({'tier': tier})}"

    def signup(self, **query: str) -> str:
        return f"{self.base}/signup" + (f"?{urlencode(query)}" if query else "")

    def buy_credits(self, pack: str | None = None) -> str:
        return f"{self.base}/billing/credits" + (f"?{urlencode({'pack': pack})}" if pack else "")

    @property
    def portal(self) -> str:
        return f"{self.base}/billing/portal"


def negotiate_locale(
    argument: str | None,
    accept_language: str | None,
    available: Sequence[str],
    *,
    stored: str | None = None,
) -> str:
    """The locale to render in: the argument, else the viewer's stored locale, else
    Accept-Language, else "en".

    A candidate counts when Babel's negotiation finds catalog copy for it; its region is kept
    (`en-US` renders English copy with US number formats and USD by default). An explicit
    locale the catalog cannot serve, or a malformed one, is treated as absent, so the next
    candidate decides: a page in the viewer's language beats an error.
    """
    candidates = [c for c in (argument, stored) if c]
    candidates += _accept_language_tags(accept_language)
    for candidate in candidates:
        tag = _canonical_tag(candidate)
        if tag is not None and _catalog_locale(tag, available) is not None:
            return tag
    return FALLBACK_LOCALE if FALLBACK_LOCALE in available else available[0]


def choose_currency(
    catalog: Catalog, locale: str, requested: str | None = None
) -> str | InvalidInput:
    """The requested currency, else the locale region's, else the catalog's default.

    A requested currency the catalog does not sell is InvalidInput: a page quietly priced in
    another currency than the one asked for would show the wrong amounts.
    """
    if requested is not None:
        code = requested.strip().upper()
        if code in catalog.currencies:
            return code
        sold = ", ".join(catalog.currencies)
        return InvalidInput(
            field="currency", reason=f"{requested[:16]!r} is not sold here; one of {sold}"
        )
    tag = _canonical_tag(locale)
    territory = Locale.parse(tag, sep="-").territory if tag else None
    if territory:
        for currency in get_territory_currencies(territory):
            if currency in catalog.currencies:
                return currency
    return catalog.default_currency


def pricing(
    *,
    catalog: Catalog,
    locale: str | None,
    currency: str | None = None,
    user: User | None,
    app_base_url: str,
) -> Pricing | InvalidInput:
    """Tier cards and credit packs in `locale`, with CTAs for `user` (None: anonymous);
    InvalidInput for a currency the catalog does not sell."""
    tag = negotiate_locale(locale, None, catalog.locales)
    copy_locale = _catalog_locale(tag, catalog.locales) or catalog.locales[0]
    babel_locale = Locale.parse(tag, sep="-")
    chosen = choose_currency(catalog, tag, currency)
    if isinstance(chosen, InvalidInput):
        return chosen
    copy = catalog.copy[copy_locale]
    links = _Links(app_base_url.rstrip("/"))
    # A tier the catalog no longer sells (None) cannot be ranked: every card then sends the
    # viewer to the portal instead of offering an upgrade that could bill them twice.
    current = catalog.tier(user.tier) if user is not None else None

    def price(amount: int) -> str:
        major = Decimal(amount).scaleb(-get_currency_precision(chosen))
        return format_currency(major, chosen, locale=babel_locale)

    tier_cards = []
    for tier in catalog.tiers:
        cta = _tier_cta(tier, user, current, copy, links)
        tier_cards.append(
            TierCard(
                code=tier.code,
                rank=tier.rank,
                name=tier.copy[copy_locale].name,
                price=price(tier.prices[chosen]),
                amount=tier.prices[chosen],
                currency=chosen,
                per_month=copy["per_month"],
                monthly_credits=tier.monthly_credits,
                allowance=copy["credits_per_month"].format(
                    credits=format_decimal(tier.monthly_credits, locale=babel_locale)
                ),
                features=tier.copy[copy_locale].features,
                entitlements=_entitlement_lines(catalog, tier, copy, copy_locale, babel_locale),
                trial_days=tier.trial_days,
                is_current=current is not None and tier.code == current.code,
                cta=cta,
                upgrade_url=cta.url if cta.kind is CtaKind.UPGRADE else None,
                manage_url=cta.url if cta.kind in _PORTAL_KINDS else None,
            )
        )
    pack_cards = tuple(
        _pack_card(pack, user, copy, links, copy_locale, chosen, price(pack.prices[chosen]))
        for pack in catalog.credit_packs
    )
    return Pricing(
        locale=tag,
        currency=chosen,
        tiers=tuple(tier_cards),
        credit_packs=pack_cards,
        sidebar_cta=_sidebar_cta(tier_cards, user, catalog, copy, links),
    )


def pricing_page(
    *,
    catalog: Catalog,
    locale: str | None,
    currency: str | None,
    viewer: User | None,
    accept_language: str | None,
    app_base_url: str,
) -> Pricing | InvalidInput:
    """The `pricing` field as any caller asks for it: the locale from the argument, else the
    viewer's stored locale, else Accept-Language, else en; CTAs for the viewer (None: anyone
    else). Both executors of the gateway call this one function."""
    chosen = negotiate_locale(
        locale,
        accept_language,
        catalog.locales,
        stored=viewer.locale if viewer is not None else None,
    )
    return pricing(
        catalog=catalog, locale=chosen, currency=currency, user=viewer, app_base_url=app_base_url
    )


_PORTAL_KINDS = (CtaKind.CURRENT, CtaKind.DOWNGRADE, CtaKind.MANAGE)


def _entitlement_lines(
    catalog: Catalog,
    tier: Tier,
    copy: Mapping[str, str],
    copy_locale: str,
    babel_locale: Locale,
) -> tuple[EntitlementLine, ...]:
    lines = []
    for feature, names in catalog.features.items():
        rule = tier.entitlements.get(feature)
        if rule is None or not rule.has_access:
            continue
        name = names[copy_locale]
        if rule.limit is None:
            text = name
        else:
            template = copy["entitlement_per_month" if rule.per else "entitlement_limit"]
            text = template.format(
                limit=format_decimal(rule.limit, locale=babel_locale), feature=name
            )
        lines.append(EntitlementLine(feature=feature, text=text, limit=rule.limit, per=rule.per))
    return tuple(lines)


def _tier_cta(
    tier: Tier,
    user: User | None,
    current: Tier | None,
    copy: Mapping[str, str],
    links: _Links,
) -> Cta:
    if user is None:
        return Cta(CtaKind.SIGNUP, copy["signup_cta"], links.signup(tier=tier.code))
    if current is None:
        return Cta(CtaKind.MANAGE, copy["manage_cta"], links.portal)
    if tier.rank > current.rank:
        return Cta(CtaKind.UPGRADE, copy["upgrade_cta"], links.upgrade(tier.code))
    if tier.code == current.code:
        # A paid tier is a Stripe subscription the viewer manages in the portal; free is not.
        return Cta(CtaKind.CURRENT, copy["current_cta"], links.portal if tier.is_paid else None)
    return Cta(CtaKind.DOWNGRADE, copy["downgrade_cta"], links.portal)


def _pack_card(
    pack: CreditPack,
    user: User | None,
    copy: Mapping[str, str],
    links: _Links,
    copy_locale: str,
    currency: str,
    price: str,
) -> CreditPackCard:
    if user is None:
        cta = Cta(CtaKind.SIGNUP, copy["signup_cta"], links.signup(pack=pack.code))
    else:
        cta = Cta(CtaKind.BUY, copy["buy_credits_cta"], links.buy_credits(pack.code))
    return CreditPackCard(
        code=pack.code,
        name=pack.copy[copy_locale].name,
        credits=pack.credits,
        price=price,
        amount=pack.prices[currency],
        currency=currency,
        cta=cta,
        buy_credits_url=cta.url if cta.kind is CtaKind.BUY else None,
    )


def _sidebar_cta(
    cards: list[TierCard],
    user: User | None,
    catalog: Catalog,
    copy: Mapping[str, str],
    links: _Links,
) -> Cta:
    """The next step up for this viewer: sign up, the next tier, or more credits at the top."""
    if user is None:
        return Cta(CtaKind.SIGNUP, copy["signup_cta"], links.signup())
    upgrade = next((card.cta for card in cards if card.cta.kind is CtaKind.UPGRADE), None)
    if upgrade is not None:
        return upgrade
    if catalog.credit_packs:
        return Cta(CtaKind.BUY, copy["buy_credits_cta"], links.buy_credits())
    return Cta(CtaKind.MANAGE, copy["manage_cta"], links.portal)


def _accept_language_tags(header: str | None) -> list[str]:
    """The header's language tags, most preferred first (q descending, then header order)."""
    if not header:
        return []
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(header.split(",")[:MAX_ACCEPT_LANGUAGE_ENTRIES]):
        tag, _, params = part.partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        # `0 < q <= 1` also rejects NaN; q=0 means "not this one".
        if tag.strip() and tag.strip() != "*" and 0 < quality <= 1:
            ranked.append((-quality, position, tag.strip()))
    return [tag for _, _, tag in sorted(ranked)]


def _canonical_tag(candidate: str) -> str | None:
    """`en_us` → `en-US`; None for what is not a locale Babel can format for."""
    if not _LOCALE_TAG.match(candidate):
        return None
    try:
        parsed = Locale.parse(candidate.replace("_", "-"), sep="-")
    except (UnknownLocaleError, ValueError):
        return None
    return str(parsed).replace("_", "-")


def _catalog_locale(tag: str, available: Sequence[str]) -> str | None:
    """The catalog locale whose copy serves `tag` (Babel: exact match, then the language)."""
    match = babel_negotiate_locale([tag], list(available), sep="-")
    if match is None:
        return None
    return next((locale for locale in available if locale.lower() == match.lower()), None)

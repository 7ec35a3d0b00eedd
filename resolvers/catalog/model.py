"""The catalog of tiers, their entitlements and credit packs: loaded from TOML, validated once."""

from __future__ import annotations

import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.numbers import list_currencies

from resolvers.catalog.entitlements import (
    ENTITLEMENT_COPY,
    EntitlementRule,
    RuleError,
    feature_names,
    parse_rules,
)

CTA_KEYS = (
    "upgrade_cta",
    "current_cta",
    "manage_cta",
    "downgrade_cta",
    "signup_cta",
    "buy_credits_cta",
    "per_month",
    "credits_per_month",
)


class CatalogError(Exception):
    """The catalog file cannot be used; the message names the entry at fault."""


@dataclass(frozen=True)
class ItemCopy:
    name: str
    features: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tier:
    code: str
    rank: int
    monthly_credits: int
    trial_days: int
    features: tuple[str, ...]
    prices: Mapping[str, int]
    stripe_price_ids: Mapping[str, str]
    copy: Mapping[str, ItemCopy]
    entitlements: Mapping[str, EntitlementRule] = field(default_factory=dict)
    # credits.low_balance is sent when available credits fall below it; 0: never.
    low_balance_threshold: int = 0

    @property
    def is_paid(self) -> bool:
        return any(amount > 0 for amount in self.prices.values())


@dataclass(frozen=True)
class CreditPack:
    code: str
    credits: int
    prices: Mapping[str, int]
    stripe_price_ids: Mapping[str, str]
    copy: Mapping[str, ItemCopy]


@dataclass(frozen=True)
class Catalog:
    tiers: tuple[Tier, ...]
    credit_packs: tuple[CreditPack, ...]
    locales: tuple[str, ...]
    currencies: tuple[str, ...]
    default_currency: str
    copy: Mapping[str, Mapping[str, str]]
    # Every feature some tier names, in catalog order, with its display name per locale.
    features: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def default_tier(self) -> Tier:
        return self.tiers[0]

    def tier(self, code: str) -> Tier | None:
        return self._tiers_by_code.get(code)

    @cached_property
    def _tiers_by_code(self) -> dict[str, Tier]:
        # Every read of a user looks up their tier: indexed once, not per call.
        return _index(self.tiers)

    def credit_pack(self, code: str) -> CreditPack | None:
        return _index(self.credit_packs).get(code)

    def tier_for_price(self, price_id: str) -> Tier | None:
        return next((t for t in self.tiers if price_id in t.stripe_price_ids.values()), None)

    def pack_for_price(self, price_id: str) -> CreditPack | None:
        return next((p for p in self.credit_packs if price_id in p.stripe_price_ids.values()), None)

    @property
    def tier_codes(self) -> tuple[str, ...]:
        return tuple(t.code for t in self.tiers)

    def usage_period(self, feature: str) -> str | None:
        """How often the feature's usage resets: the same for every tier that limits it."""
        return self._usage_periods.get(feature)

    @cached_property
    def _usage_periods(self) -> dict[str, str]:
        # Asked on every entitlement check: found once per feature rather than per check.
        periods: dict[str, str] = {}
        for tier in self.tiers:
            for feature, rule in tier.entitlements.items():
                if rule.per:
                    periods.setdefault(feature, rule.per)
        return periods


def _index(items: tuple[Any, ...]) -> dict[str, Any]:
    return {item.code: item for item in items}


def load_catalog(path: Path) -> Catalog:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"catalog {path}: {exc}") from exc
    return parse_catalog(raw)


def parse_catalog(raw: Mapping[str, Any]) -> Catalog:
    locales = tuple(_list_of_str(raw, "locales", "catalog"))
    if not locales:
        raise CatalogError("catalog: locales must name at least one locale")
    _require_unique("locale", list(locales))
    for locale in locales:
        _require_known_locale(locale)
    known_currencies = list_currencies()
    currencies = tuple(_list_of_str(raw, "currencies", "catalog"))
    if not currencies:
        raise CatalogError("catalog: currencies must name at least one currency")
    _require_unique("currency", list(currencies))
    for currency in currencies:
        if currency not in known_currencies:
            raise CatalogError(f"catalog: unknown currency {currency!r}")
    default_currency = raw.get("default_currency", currencies[0] if currencies else "")
    if default_currency not in currencies:
        raise CatalogError(f"catalog: default_currency {default_currency!r} is not in currencies")

    copy: dict[str, Mapping[str, str]] = {}
    raw_copy = raw.get("copy", {})
    for locale in locales:
        strings = raw_copy.get(locale)
        if not isinstance(strings, dict):
            raise CatalogError(f"catalog copy: missing translation for locale {locale!r}")
        for key in CTA_KEYS:
            if not isinstance(strings.get(key), str) or not strings[key].strip():
                raise CatalogError(f"catalog copy.{locale}: missing translation {key!r}")
        _require_placeholders(
            strings["credits_per_month"], {"credits"}, f"catalog copy.{locale}.credits_per_month"
        )
        copy[locale] = MappingProxyType(dict(strings))

    seen_prices: dict[str, str] = {}
    tiers = tuple(
        _parse_tier(entry, locales, currencies, seen_prices)
        for entry in _list_of_tables(raw, "tiers")
    )
    packs = tuple(
        _parse_pack(entry, locales, currencies, seen_prices)
        for entry in _list_of_tables(raw, "credit_packs")
    )
    if not tiers:
        raise CatalogError("catalog: at least one tier is required")
    _require_unique("tier", [t.code for t in tiers])
    _require_unique("credit pack", [p.code for p in packs])
    _require_unique("tier rank", [str(t.rank) for t in tiers])
    tiers = tuple(sorted(tiers, key=lambda t: t.rank))
    if tiers[0].is_paid:
        raise CatalogError(f"tier {tiers[0].code}: the lowest tier must be free")
    try:
        features = feature_names(
            raw.get("features", {}), [(t.code, t.entitlements) for t in tiers], locales
        )
    except RuleError as exc:
        raise CatalogError(str(exc)) from None
    if any(rule.limit is not None for t in tiers for rule in t.entitlements.values()):
        for locale in locales:
            for key, placeholders in ENTITLEMENT_COPY.items():
                text = copy[locale].get(key)
                if not isinstance(text, str) or not text.strip():
                    raise CatalogError(f"catalog copy.{locale}: missing translation {key!r}")
                _require_placeholders(text, placeholders, f"catalog copy.{locale}.{key}")
    return Catalog(
        tiers=tiers,
        credit_packs=packs,
        locales=locales,
        currencies=currencies,
        default_currency=default_currency,
        copy=MappingProxyType(copy),
        features=features,
    )


def _parse_tier(
    entry: Mapping[str, Any],
    locales: tuple[str, ...],
    currencies: tuple[str, ...],
    seen_prices: dict[str, str],
) -> Tier:
    code = _code(entry, "tier")
    where = f"tier {code}"
    prices = _prices(entry, where, currencies)
    stripe_price_ids = _stripe_prices(entry, where, currencies, seen_prices)
    for currency, amount in prices.items():
        if amount > 0 and currency not in stripe_price_ids:
            raise CatalogError(f"{where}: paid in {currency} but has no Stripe price id for it")
    return Tier(
        code=code,
        rank=_int(entry, "rank", where),
        monthly_credits=_int(entry, "monthly_credits", where),
        trial_days=_int(entry, "trial_days", where, default=0),
        features=tuple(_list_of_str(entry, "features", where)),
        prices=prices,
        stripe_price_ids=stripe_price_ids,
        copy=_item_copy(entry, where, locales),
        entitlements=_rules(entry.get("entitlements", {}), where),
        low_balance_threshold=_int(entry, "low_balance_threshold", where, default=0),
    )


def _rules(raw: Any, where: str) -> Mapping[str, EntitlementRule]:
    try:
        return parse_rules(raw, where)
    except RuleError as exc:
        raise CatalogError(str(exc)) from None


def _parse_pack(
    entry: Mapping[str, Any],
    locales: tuple[str, ...],
    currencies: tuple[str, ...],
    seen_prices: dict[str, str],
) -> CreditPack:
    code = _code(entry, "credit pack")
    where = f"credit pack {code}"
    credits = _int(entry, "credits", where)
    if credits <= 0:
        raise CatalogError(f"{where}: credits must be positive")
    prices = _prices(entry, where, currencies)
    stripe_price_ids = _stripe_prices(entry, where, currencies, seen_prices)
    for currency in prices:
        if currency not in stripe_price_ids:
            raise CatalogError(f"{where}: priced in {currency} but has no Stripe price id for it")
    return CreditPack(
        code=code,
        credits=credits,
        prices=prices,
        stripe_price_ids=stripe_price_ids,
        copy=_item_copy(entry, where, locales),
    )


def _code(entry: Mapping[str, Any], kind: str) -> str:
    code = entry.get("code")
    if not isinstance(code, str) or not code.isidentifier():
        raise CatalogError(f"{kind} {code!r}: code must be a lowercase identifier")
    return code


def _int(entry: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = entry.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CatalogError(f"{where}: {key} must be a non-negative integer")
    return value


def _prices(entry: Mapping[str, Any], where: str, currencies: tuple[str, ...]) -> Mapping[str, int]:
    prices = entry.get("prices", {})
    if not isinstance(prices, dict) or not prices:
        raise CatalogError(f"{where}: prices must map currencies to amounts in minor units")
    for currency, amount in prices.items():
        if currency not in currencies:
            raise CatalogError(f"{where}: unknown currency {currency!r}")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
            raise CatalogError(f"{where}: price in {currency} must be a non-negative integer")
    # Pricing cards are shown in any catalog currency: a hole would drop the card silently.
    for currency in currencies:
        if currency not in prices:
            raise CatalogError(f"{where}: no price in {currency}")
    return MappingProxyType(dict(prices))


def _stripe_prices(
    entry: Mapping[str, Any],
    where: str,
    currencies: tuple[str, ...],
    seen_prices: dict[str, str],
) -> Mapping[str, str]:
    price_ids = entry.get("stripe_price_ids", {})
    if not isinstance(price_ids, dict):
        raise CatalogError(f"{where}: stripe_price_ids must map currencies to Stripe price ids")
    for currency, price_id in price_ids.items():
        if currency not in currencies:
            raise CatalogError(f"{where}: unknown currency {currency!r} in stripe_price_ids")
        if not isinstance(price_id, str) or not price_id.startswith("price_"):
            raise CatalogError(f"{where}: Stripe price id for {currency} must start with price_")
        if price_id in seen_prices:
            raise CatalogError(
                f"{where}: Stripe price {price_id} is already used by {seen_prices[price_id]}"
            )
        seen_prices[price_id] = where
    return MappingProxyType(dict(price_ids))


def _item_copy(
    entry: Mapping[str, Any], where: str, locales: tuple[str, ...]
) -> Mapping[str, ItemCopy]:
    raw = entry.get("copy", {})
    copy: dict[str, ItemCopy] = {}
    for locale in locales:
        text = raw.get(locale) if isinstance(raw, dict) else None
        if not isinstance(text, dict):
            text = {}
        name = text.get("name")
        if not isinstance(name, str) or not name.strip():
            raise CatalogError(f"{where}: missing translation for locale {locale!r}")
        features = tuple(_list_of_str(text, "features", f"{where} copy.{locale}"))
        if any(not feature.strip() for feature in features):
            raise CatalogError(f"{where}: copy.{locale} has an empty feature")
        copy[locale] = ItemCopy(name=name, features=features)
    # Feature lists are translated line by line: a shorter list is a missing translation.
    longest = max(locales, key=lambda locale: len(copy[locale].features))
    for locale in locales:
        if len(copy[locale].features) != len(copy[longest].features):
            raise CatalogError(
                f"{where}: missing translation of features for locale {locale!r}"
                f" ({len(copy[locale].features)} listed, {longest!r} lists"
                f" {len(copy[longest].features)})"
            )
    return MappingProxyType(copy)


def _list_of_str(entry: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CatalogError(f"{where}: {key} must be a list of strings")
    return value


def _list_of_tables(raw: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise CatalogError(f"catalog: {key} must be an array of tables")
    return value


def _require_known_locale(locale: str) -> None:
    try:
        Locale.parse(locale.replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError) as exc:
        raise CatalogError(f"catalog: unknown locale {locale!r}") from exc


def _require_placeholders(text: str, allowed: set[str], where: str) -> None:
    """A template must use exactly the placeholders the code fills in, or rendering fails."""
    try:
        used = {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
    except ValueError as exc:
        raise CatalogError(f"{where}: not a valid template ({exc})") from exc
    if used != allowed:
        expected = ", ".join("{" + name + "}" for name in sorted(allowed))
        raise CatalogError(f"{where}: must contain {expected} and no other placeholder")


def _require_unique(kind: str, codes: list[str]) -> None:
    seen: set[str] = set()
    for code in codes:
        if code in seen:
            raise CatalogError(f"{kind} {code}: duplicate")
        seen.add(code)

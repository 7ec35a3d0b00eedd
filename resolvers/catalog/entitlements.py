"""The catalog's entitlements: what each tier entitles to per feature, read from its TOML."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# Copy a catalog needs once a tier declares a limited entitlement (pricing-card lines).
ENTITLEMENT_COPY = {
    "entitlement_limit": {"limit", "feature"},
    "entitlement_per_month": {"limit", "feature"},
}
# How often metered usage starts again at zero; the only period the catalog offers.
USAGE_PERIODS = ("month",)
MAX_FEATURE_LENGTH = 64


class RuleError(ValueError):
    """An entitlement entry is unusable; the catalog reports it as a CatalogError."""


@dataclass(frozen=True)
class EntitlementRule:
    """What a tier entitles to for one feature: access, and optionally a limit on its usage."""

    feature: str
    has_access: bool
    limit: int | None = None  # None: no limit
    per: str | None = None  # "month": usage resets each period; None: a running count


def is_feature_code(feature: str) -> bool:
    return (
        feature.isidentifier() and feature == feature.lower() and len(feature) <= MAX_FEATURE_LENGTH
    )


def parse_rules(raw: Any, where: str) -> Mapping[str, EntitlementRule]:
    """`api = true`, `projects = { limit = 20 }`, `exports = { limit = 9, per = "month" }`."""
    if not isinstance(raw, dict):
        raise RuleError(f"{where}: entitlements must be a table of features")
    rules: dict[str, EntitlementRule] = {}
    for feature, value in raw.items():
        at = f"{where} entitlement {feature}"
        if not is_feature_code(feature):
            raise RuleError(f"{at}: a feature must be a lowercase identifier (64 at most)")
        if isinstance(value, bool):
            rules[feature] = EntitlementRule(feature=feature, has_access=value)
            continue
        if not isinstance(value, dict) or set(value) - {"limit", "per"} or "limit" not in value:
            raise RuleError(f'{at}: must be true, false or {{ limit = N [, per = "month"] }}')
        limit = value["limit"]
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise RuleError(f"{at}: limit must be a non-negative integer")
        per = value.get("per")
        if per is not None and per not in USAGE_PERIODS:
            raise RuleError(f"{at}: per must be one of {', '.join(USAGE_PERIODS)}")
        rules[feature] = EntitlementRule(feature=feature, has_access=True, limit=limit, per=per)
    return MappingProxyType(rules)


def feature_names(
    names: Any,
    tiers: Iterable[tuple[str, Mapping[str, EntitlementRule]]],
    locales: tuple[str, ...],
) -> Mapping[str, Mapping[str, str]]:
    """Each feature's name per locale, in catalog order; a feature is metered alike in all tiers."""
    if not isinstance(names, dict):
        raise RuleError("catalog: features must map feature codes to names per locale")
    periods: dict[str, str | None] = {}
    features: dict[str, Mapping[str, str]] = {}
    for tier, rules in tiers:
        for feature, rule in rules.items():
            # Usage is counted per period: one tier counting monthly and another for ever would
            # make a tier change reinterpret the count.
            if rule.limit is not None and periods.setdefault(feature, rule.per) != rule.per:
                raise RuleError(
                    f"tier {tier} entitlement {feature}: per must be the same in every tier"
                    " that limits it"
                )
            if feature in features:
                continue
            text = names.get(feature)
            for locale in locales:
                name = text.get(locale) if isinstance(text, dict) else None
                if not isinstance(name, str) or not name.strip():
                    raise RuleError(f"feature {feature}: missing translation for locale {locale!r}")
            features[feature] = MappingProxyType({locale: text[locale] for locale in locales})
    for feature in names:
        if feature not in features:
            raise RuleError(f"feature {feature}: no tier names it in its entitlements")
    # In the order of [features]: the order the pricing cards and `entitlements` list them.
    return MappingProxyType({feature: features[feature] for feature in names})

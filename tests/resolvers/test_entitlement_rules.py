"""The catalog's entitlements: the shipped tiers entitle sensibly, a bad entry stops start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import DEFAULT_CATALOG
from resolvers.catalog.entitlements import EntitlementRule
from resolvers.catalog.model import CatalogError, load_catalog
from tests.resolvers.test_catalog import GOOD, write_catalog

# The small test catalog with an on/off feature, a count and a metered feature.
ENTITLED = (
    GOOD.replace(
        'credits_per_month = "{credits} AI credits per month"\n',
        'credits_per_month = "{credits} AI credits per month"\n'
        'entitlement_limit = "{limit} {feature}"\n'
        'entitlement_per_month = "{limit} {feature} per month"\n',
    )
    .replace(
        'credits_per_month = "{credits} AI-credits per maand"\n',
        'credits_per_month = "{credits} AI-credits per maand"\n'
        'entitlement_limit = "{limit} {feature}"\n'
        'entitlement_per_month = "{limit} {feature} per maand"\n',
    )
    .replace(
        'copy.nl = { name = "Gratis", features = ["Zoeken"] }\n',
        'copy.nl = { name = "Gratis", features = ["Zoeken"] }\n'
        "entitlements.projects = { limit = 3 }\n",
    )
    .replace(
        'copy.nl = { name = "Pro", features = ["Zoeken", "AI-assistent"] }\n',
        'copy.nl = { name = "Pro", features = ["Zoeken", "AI-assistent"] }\n'
        "entitlements.api_access = true\n"
        "entitlements.projects = { limit = 20 }\n"
        'entitlements.pdf_exports = { limit = 100, per = "month" }\n',
    )
    .replace(
        "[[tiers]]\n",
        "[features]\n"
        'api_access = { en = "API access", nl = "API-toegang" }\n'
        'projects = { en = "projects", nl = "projecten" }\n'
        'pdf_exports = { en = "PDF exports", nl = "PDF-exports" }\n\n'
        "[[tiers]]\n",
        1,
    )
)


def entitled(old: str, new: str) -> str:
    assert ENTITLED.count(old) == 1, f"the test's edit must hit exactly one place: {old!r}"
    return ENTITLED.replace(old, new)


def test_shipped_tiers_entitle_more_the_higher_they_rank() -> None:
    catalog = load_catalog(DEFAULT_CATALOG)
    free, pro, team = (catalog.tier(code) for code in ("free", "pro", "team"))
    assert free and pro and team
    assert "api_access" not in free.entitlements
    assert pro.entitlements["api_access"] == EntitlementRule("api_access", has_access=True)
    limits = [t.entitlements["pdf_exports"].limit or 0 for t in (free, pro, team)]
    assert limits == sorted(limits) and limits[0] > 0
    assert catalog.usage_period("pdf_exports") == "month"
    assert catalog.usage_period("projects") is None
    assert set(catalog.features) == {"api_access", "projects", "pdf_exports", "shared_workspaces"}
    assert all(set(names) == set(catalog.locales) for names in catalog.features.values())


def test_the_entitled_test_catalog_is_valid(tmp_path: Path) -> None:
    catalog = load_catalog(write_catalog(tmp_path, ENTITLED))
    pro = catalog.tier("pro")
    assert pro is not None
    assert pro.entitlements["pdf_exports"] == EntitlementRule(
        "pdf_exports", has_access=True, limit=100, per="month"
    )
    assert list(catalog.features) == ["api_access", "projects", "pdf_exports"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            entitled("projects = { limit = 20 }", "projects = { limit = -1 }"),
            "tier pro entitlement projects: limit must be a non-negative integer",
            id="negative-limit",
        ),
        pytest.param(
            entitled("projects = { limit = 20 }", 'projects = { limit = 20, per = "week" }'),
            "tier pro entitlement projects: per must be one of month",
            id="unknown-period",
        ),
        pytest.param(
            entitled("projects = { limit = 20 }", "projects = { max = 20 }"),
            "tier pro entitlement projects: must be true, false or",
            id="unknown-key",
        ),
        pytest.param(
            entitled("entitlements.api_access = true", 'entitlements.api_access = "yes"'),
            "tier pro entitlement api_access: must be true, false or",
            id="not-a-boolean",
        ),
        pytest.param(
            entitled("entitlements.api_access = true", "entitlements.API = true"),
            "tier pro entitlement API: a feature must be a lowercase identifier",
            id="feature-code-not-lowercase",
        ),
        pytest.param(
            entitled("projects = { limit = 20 }", 'projects = { limit = 20, per = "month" }'),
            "tier pro entitlement projects: per must be the same in every tier that limits it",
            id="metered-in-one-tier-counted-in-another",
        ),
        pytest.param(
            entitled(
                'api_access = { en = "API access", nl = "API-toegang" }',
                'api_access = { en = "API access" }',
            ),
            "feature api_access: missing translation for locale 'nl'",
            id="feature-name-missing-in-a-locale",
        ),
        pytest.param(
            entitled(
                'pdf_exports = { en = "PDF exports", nl = "PDF-exports" }\n',
                'pdf_exports = { en = "PDF exports", nl = "PDF-exports" }\n'
                'sso = { en = "SSO", nl = "SSO" }\n',
            ),
            "feature sso: no tier names it in its entitlements",
            id="named-feature-no-tier-entitles-to",
        ),
        pytest.param(
            entitled('entitlement_per_month = "{limit} {feature} per maand"\n', ""),
            "catalog copy.nl: missing translation 'entitlement_per_month'",
            id="limit-copy-missing",
        ),
        pytest.param(
            entitled('"{limit} {feature} per month"', '"{feature} per month"'),
            "catalog copy.en.entitlement_per_month: must contain {feature}, {limit}",
            id="limit-copy-loses-its-placeholder",
        ),
    ],
)
def test_bad_entitlement_is_refused_with_one_line_naming_it(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(CatalogError) as refused:
        load_catalog(write_catalog(tmp_path, text))
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)

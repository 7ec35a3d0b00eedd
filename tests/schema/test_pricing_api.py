"""`pricing` over HTTP: the viewer's stored locale, and a currency the catalog does not sell."""

from __future__ import annotations

from resolvers import users
from tests.factories import unique_email
from tests.schema.conftest import data_of, error_codes, user_token

PRICING = """
query ($locale: String, $currency: String) {
  pricing(locale: $locale, currency: $currency) {
    locale currency
    tiers { code name price }
    creditPacks { cta { label } }
  }
}
"""


async def make_user_with_locale(runtime, locale: str) -> int:
    now = runtime.clock()
    result = await runtime.db.write(
        lambda s: users.upsert_user(
            s, email=unique_email(), catalog=runtime.catalog, now=now, locale=locale
        )
    )
    assert isinstance(result, users.UserUpserted), result
    return result.user.id


async def pricing_page(gql, *, token: str | None = None, **variables) -> dict:
    headers = {"Accept-Language": "de-DE,de;q=0.9"}
    response = await gql.post(PRICING, variables, token=token, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_the_viewers_stored_locale_beats_accept_language(runtime, gql) -> None:
    user_id = await make_user_with_locale(runtime, "nl")
    page = data_of(await pricing_page(gql, token=user_token(user_id)))["pricing"]
    assert (page["locale"], page["currency"]) == ("nl", "EUR")
    assert page["tiers"][0]["name"] == "Gratis"
    assert page["creditPacks"][0]["cta"]["label"] == "Koop AI-credits"


async def test_a_locale_argument_beats_the_stored_locale(runtime, gql) -> None:
    user_id = await make_user_with_locale(runtime, "nl")
    page = data_of(await pricing_page(gql, token=user_token(user_id), locale="en-US"))
    assert (page["pricing"]["locale"], page["pricing"]["currency"]) == ("en-US", "USD")


async def test_without_a_stored_locale_accept_language_decides(runtime, gql) -> None:
    anonymous = data_of(await pricing_page(gql))["pricing"]
    assert anonymous["locale"] == "de-DE"
    user_id = await make_user_with_locale(runtime, "fr")  # not in the catalog: ignored
    page = data_of(await pricing_page(gql, token=user_token(user_id)))["pricing"]
    assert page["locale"] == "de-DE"


async def test_an_unsold_currency_is_bad_user_input_naming_the_field(gql) -> None:
    body = await pricing_page(gql, locale="en-GB", currency="GBP")
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["message"].startswith("currency: 'GBP' is not sold here")
    assert body["errors"][0]["path"] == ["pricing"]
    assert body["data"] is None
    dollars = data_of(await pricing_page(gql, locale="nl", currency="usd"))["pricing"]
    assert dollars["currency"] == "USD"

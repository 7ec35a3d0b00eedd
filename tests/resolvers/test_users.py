"""upsert_user: the one way users come into being (CLI, service mutation, first end-user JWT)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from gateway.runtime import Runtime
from resolvers import users
from resolvers.errors import InvalidInput, UnknownTier
from resolvers.models import User
from resolvers.users import UserRef


async def upsert(runtime: Runtime, email: str, **kw):
    return await runtime.db.write(
        lambda s: users.upsert_user(
            s, email=email, catalog=runtime.catalog, now=runtime.clock(), **kw
        )
    )


async def stored_users(runtime: Runtime) -> list[User]:
    async with runtime.db.read() as session:
        return list((await session.scalars(select(User).order_by(User.id))).all())


async def test_email_is_unique_whatever_its_case(runtime: Runtime) -> None:
    first = await upsert(runtime, "Ann.Smith@Example.COM")
    again = await upsert(runtime, "  ann.smith@example.com ")
    shouted = await upsert(runtime, "ANN.SMITH@EXAMPLE.COM")

    assert (first.created, again.created, shouted.created) == (True, False, False)
    assert first.user.id == again.user.id == shouted.user.id
    assert [u.email for u in await stored_users(runtime)] == ["ann.smith@example.com"]
    async with runtime.db.read() as session:
        found = await users.find_user(session, UserRef(email="Ann.Smith@example.com"))
    assert found is not None and found.id == first.user.id


async def test_new_user_gets_the_default_tier_and_no_credits(runtime: Runtime) -> None:
    result = await upsert(runtime, "new@example.com")
    assert isinstance(result, users.UserUpserted)
    assert (result.user.tier, result.user.credits_available) == (
        runtime.catalog.default_tier.code,
        0,
    )


async def test_upsert_updates_locale_and_external_id_but_never_the_tier(runtime: Runtime) -> None:
    await upsert(runtime, "bob@example.com", tier="pro")
    result = await upsert(
        runtime, "BOB@example.com", locale="nl-NL", external_id="app-42", tier="team"
    )
    assert isinstance(result, users.UserUpserted) and not result.created

    [bob] = await stored_users(runtime)
    assert (bob.locale, bob.external_id, bob.tier) == ("nl-NL", "app-42", "pro")

    # Saying nothing about locale or external id keeps what is stored.
    await upsert(runtime, "bob@example.com")
    [bob] = await stored_users(runtime)
    assert (bob.locale, bob.external_id) == ("nl-NL", "app-42")


@pytest.mark.parametrize(
    "email",
    [
        "",
        "   ",
        "no-at-sign.example.com",
        "two@@example.com",
        "sp ace@example.com",
        "nodot@localhost",
        "a" * 65 + "@example.com",
        "x@" + "d" * 320 + ".com",
    ],
)
async def test_malformed_email_is_refused_and_nothing_is_written(
    runtime: Runtime, email: str
) -> None:
    result = await upsert(runtime, email)
    assert isinstance(result, InvalidInput) and result.field == "email", result
    assert await stored_users(runtime) == []


@pytest.mark.parametrize("locale", ["", "english!", "e", "12", "nl_", "nl NL", "x" * 40])
async def test_malformed_locale_is_refused(runtime: Runtime, locale: str) -> None:
    result = await upsert(runtime, "carol@example.com", locale=locale)
    assert isinstance(result, InvalidInput) and result.field == "locale", result
    assert await stored_users(runtime) == []


@pytest.mark.parametrize("locale", ["nl", "nl-NL", "en_GB", "zh-Hant-TW", "de"])
async def test_well_formed_locales_are_kept(runtime: Runtime, locale: str) -> None:
    result = await upsert(runtime, "dave@example.com", locale=locale)
    assert isinstance(result, users.UserUpserted) and result.user.locale == locale


@pytest.mark.parametrize("external_id", ["", "e" * 256])
async def test_external_id_must_be_1_to_255_characters(runtime: Runtime, external_id: str) -> None:
    result = await upsert(runtime, "erin@example.com", external_id=external_id)
    assert isinstance(result, InvalidInput) and result.field == "externalId", result


async def test_unknown_tier_is_refused(runtime: Runtime) -> None:
    result = await upsert(runtime, "frank@example.com", tier="platinum")
    assert result == UnknownTier(tier="platinum", known=runtime.catalog.tier_codes)
    assert "platinum" in result.message and "pro" in result.message
    assert await stored_users(runtime) == []


async def test_external_id_of_another_user_is_refused_as_a_value(runtime: Runtime) -> None:
    await upsert(runtime, "gina@example.com", external_id="app-7")
    taken = await upsert(runtime, "hank@example.com", external_id="app-7")
    assert isinstance(taken, InvalidInput) and taken.field == "externalId", taken
    await upsert(runtime, "hank@example.com")
    moved = await upsert(runtime, "hank@example.com", external_id="app-7")
    assert isinstance(moved, InvalidInput) and moved.field == "externalId", moved
    assert [(u.email, u.external_id) for u in await stored_users(runtime)] == [
        ("gina@example.com", "app-7"),
        ("hank@example.com", None),
    ]

"""Small factories: tests build their own data through the same resolvers the gateway uses."""

from __future__ import annotations

from datetime import datetime

from gateway.runtime import Runtime
from resolvers import users
from resolvers.ledger import allowances, credits
from resolvers.ledger.accounts import lock_account, save_account
from resolvers.ledger.entries import Actor
from resolvers.models import User
from resolvers.users import UserRef
from tests.conftest import unique_email

SUPPORT = Actor(name="test-support", source="support", request_id="req-test")


async def make_user(
    runtime: Runtime,
    *,
    email: str | None = None,
    tier: str | None = None,
    credits_granted: int = 0,
    expires_at: datetime | None = None,
    with_allowance: bool = False,
    calendar_allowances: bool = True,
) -> User:
    """A user with `credits_granted` support credits; no plan allowance unless asked.

    A user made without `calendar_allowances` is billed through a Stripe subscription, so no
    month boundary the test's clock crosses brings a calendar allowance: the balance is only
    what the test grants, at any date the suite runs.
    """
    email = email or unique_email()
    now = runtime.clock()

    async def work(session):
        result = await users.upsert_user(
            session, email=email, catalog=runtime.catalog, now=now, tier=tier
        )
        assert isinstance(result, users.UserUpserted), result
        account = await lock_account(session, UserRef(user_id=result.user.id))
        assert account is not None
        if not calendar_allowances:
            account.stripe_subscription_id = f"sub_test_{account.id}"
            account.subscription_status = "active"
        if not with_allowance:
            # Mark this month's allowance as done so balances are exactly what the test grants.
            account.allowance_period_start = allowances.allowance_period(now)[0]
            await save_account(session, account)
        else:
            await allowances.grant_plan_allowance(
                session, account, catalog=runtime.catalog, now=now, actor=SUPPORT
            )
        if credits_granted:
            granted = await credits.grant_ai_credits(
                session,
                user=account,
                amount=credits_granted,
                reason="test grant",
                actor=SUPPORT,
                now=now,
                expires_at=expires_at,
            )
            assert isinstance(granted, credits.CreditChanged), granted
        return account.id

    user_id = await runtime.db.write(work)
    async with runtime.db.read() as session:
        user = await session.get(User, user_id)
    assert user is not None
    return user

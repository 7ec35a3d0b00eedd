"""The monthly plan allowance: when it is due, what it grants, and granting it once a month."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.catalog.model import Catalog
from resolvers.kinds import is_paying
from resolvers.ledger.accounts import Account, lock_account, save_account
from resolvers.ledger.entries import Actor, LedgerEvent, add_grant, expire_credits
from resolvers.ledger.idempotency import find_key_use, fingerprint
from resolvers.models import User
from resolvers.users import UserRef

# The month last asked about: nearly every call (a viewer's balance, each spend) is in it, and
# building the month again was ~3% of a viewer read's samples.
_last_month: tuple[datetime, datetime] | None = None


def allowance_period(now: datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) containing `now`: the period of a plan allowance."""
    global _last_month
    last = _last_month
    if last is not None and now.tzinfo is not None and last[0] <= now < last[1]:
        return last
    _last_month = month = month_of(now)
    return month


def month_of(now: datetime) -> tuple[datetime, datetime]:
    """`allowance_period` without its memory of the last month."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


async def grant_plan_allowance(
    session: AsyncSession, user: Account, *, catalog: Catalog, now: datetime, actor: Actor
) -> LedgerEvent | None:
    """Grant the tier's monthly credits for the current month, once; they expire at its end."""
    start = allowance_period(now)[0]
    if user.allowance_period_start == start:
        return None
    due = pending_allowance(user, catalog=catalog, now=now)
    user.allowance_period_start = start
    if due is None:
        await save_account(session, user)
        return None
    key = f"allowance:{user.id}:{due.tier}:{due.period_start:%Y-%m}"
    digest = fingerprint("allowance", user=user.id, tier=due.tier, period=due.period_start)
    if await find_key_use(session, key) is not None:
        await save_account(session, user)
        return None
    # add_grant saves the account, the period start with it.
    return await add_grant(
        session,
        user,
        amount=due.amount,
        reason=due.reason,
        actor=Actor(name="system", source="plan_allowance", request_id=actor.request_id),
        now=now,
        expires_at=due.expires_at,
        idempotency_key=key,
        digest=digest,
    )


async def refresh_balance(
    session: AsyncSession,
    user: Account,
    *,
    catalog: Catalog | None,
    now: datetime,
    actor: Actor,
) -> None:
    """Bring a locked user's balance up to `now`: write off what expired, then grant the month's
    allowance if it is due (given the catalog). Every change runs this before its own effect, so
    the balance it works on is the one reads already showed."""
    await expire_credits(session, user, now=now, actor=actor)
    if catalog is not None:
        await grant_plan_allowance(session, user, catalog=catalog, now=now, actor=actor)


@dataclass(frozen=True)
class PendingAllowance:
    """This month's plan allowance, due but not granted yet: what a read shows as if granted."""

    tier: str
    amount: int
    period_start: datetime
    expires_at: datetime

    @property
    def reason(self) -> str:
        return f"{self.tier} plan allowance {self.period_start:%Y-%m}"


def pending_allowance(
    user: User | Account, *, catalog: Catalog, now: datetime
) -> PendingAllowance | None:
    """The allowance the user's next write (or `entitlements allowances grant`) will grant.

    Reads never write: a balance read before the grant adds this to what is stored.
    Users billed through a Stripe subscription get theirs from paid invoices instead.
    """
    start, end = allowance_period(now)
    if user.allowance_period_start == start:
        return None
    tier = catalog.tier(user.tier)
    if tier is None or tier.monthly_credits <= 0:
        return None
    if user.stripe_subscription_id and is_paying(user.subscription_status):
        return None
    return PendingAllowance(
        tier=tier.code, amount=tier.monthly_credits, period_start=start, expires_at=end
    )


async def users_due_an_allowance(
    session: AsyncSession, *, now: datetime, after_id: int, limit: int
) -> list[int]:
    """Ids of users whose allowance for this month has not been looked at, in id order."""
    start = allowance_period(now)[0]
    return list(
        (
            await session.scalars(
                select(User.id)
                .where(
                    User.id > after_id,
                    or_(
                        User.allowance_period_start.is_(None), User.allowance_period_start != start
                    ),
                )
                .order_by(User.id)
                .limit(limit)
            )
        ).all()
    )


async def grant_due_allowance(
    session: AsyncSession, user_id: int, *, catalog: Catalog, now: datetime, actor: Actor
) -> LedgerEvent | None:
    """Lock the user, write off expired grants, grant a due allowance; the grant's event."""
    row = await lock_account(session, UserRef(user_id=user_id))
    if row is None:
        return None
    await expire_credits(session, row, now=now, actor=actor)
    # Not refresh_balance: the caller wants the allowance's event.
    return await grant_plan_allowance(session, row, catalog=catalog, now=now, actor=actor)

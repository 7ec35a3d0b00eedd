"""The Subscription root: a user's balance and entitlements, pushed as changes commit.

The first message is the state now; then one each time a committed change moved it. A
subscriber is woken by any change of its user (gateway.live) and reads afresh: a message is
sent when the ledger position (`asOf`) moved, or an entitlement differs from the last one sent,
so a read that covers several commits sends the latest state once, never an older one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager

import strawberry
from strawberry import Info

from resolvers.entitlements import access as entitlements
from resolvers.ledger.positions import AccountAt, accounts_at_position
from resolvers.loaders import users_by_email
from resolvers.models import parse_row_id
from resolvers.users import normalize_email
from schema.context import VIEWER, BadUserInput, Context, Wakeups, forbidden, unauthenticated
from schema.credits import CreditBalance
from schema.entitlements import Entitlement

log = logging.getLogger("schema.subscription")

# Roles that may name the user they watch; viewers watch their own account only.
WATCHING_ROLES = frozenset({"service", "support", "admin"})
# A read that failed is tried again this often, 0.1 s, 0.2 s, 0.4 s, 0.8 s apart.
READ_ATTEMPTS = 5
READ_BACKOFF_SECONDS = 0.1


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="The balance now, then again after each committed change of it. Viewers: "
        "their own account (no arguments). Service and support keys: name the user by email "
        "or userId."
    )
    async def credits_changed(
        self, info: Info, email: str | None = None, user_id: strawberry.ID | None = None
    ) -> AsyncGenerator[CreditBalance, None]:
        # Not a generator itself: a refusal here is the subscription's `error`, before any data.
        ctx: Context = info.context
        return _balances(ctx, await _admitted(ctx, email, user_id))

    @strawberry.subscription(
        description="Each entitlement now, then each one again when a committed change "
        "altered it. Who may watch whom: as creditsChanged."
    )
    async def entitlement_changed(
        self, info: Info, email: str | None = None, user_id: strawberry.ID | None = None
    ) -> AsyncGenerator[Entitlement, None]:
        ctx: Context = info.context
        return _entitlements(ctx, await _admitted(ctx, email, user_id))


async def _balances(ctx: Context, user_id: int) -> AsyncGenerator[CreditBalance, None]:
    sent: tuple[int | None] | None = None
    async with _watch(ctx, user_id) as wakeups:
        while True:
            account = await _read(ctx, user_id)
            if account is not None and (account.position,) != sent:
                sent = (account.position,)
                ctx.forget_loaded()
                yield CreditBalance(user=account.row, position=sent)
            await wakeups.wait()


async def _entitlements(ctx: Context, user_id: int) -> AsyncGenerator[Entitlement, None]:
    sent: dict[str, entitlements.Entitlement] = {}
    async with _watch(ctx, user_id) as wakeups:
        while True:
            account = await _read(ctx, user_id)
            shown = (
                entitlements.entitlements_of(ctx.catalog, account.row, ctx.clock())
                if account is not None
                else []
            )
            for value in shown:
                if sent.get(value.feature) != value:
                    sent[value.feature] = value
                    yield Entitlement.of(value)
            await wakeups.wait()


async def _admitted(ctx: Context, email: str | None, user_id: strawberry.ID | None) -> int:
    """The user to watch, once the caller may watch them and the process has room."""
    watched = await _watched_user(ctx, email, user_id)
    if ctx.live is None:
        raise BadUserInput("Subscriptions need a websocket (graphql-transport-ws) at /graphql")
    ctx.live.admit()
    return watched


def _watch(ctx: Context, user_id: int) -> AbstractAsyncContextManager[Wakeups]:
    assert ctx.live is not None, "checked by _admitted"
    return ctx.live.watch(user_id)


async def _read(ctx: Context, user_id: int) -> AccountAt | None:
    """The account and its position in one statement.

    After the database came back, the first read may meet a pooled connection it dropped; that
    connection is thrown away, so the read is tried again (with a short backoff) rather than
    waiting for a wake-up that may not come. None while the database stays away: the listener's
    or the poll's recovery then wakes every subscriber to read again.
    """
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            async with ctx.db.connect() as conn:
                return (await accounts_at_position(conn, [user_id])).get(user_id)
        except Exception:
            if attempt == READ_ATTEMPTS:
                log.warning(
                    "subscription read failed; reading again on the next wake-up", exc_info=True
                )
                return None
            await asyncio.sleep(READ_BACKOFF_SECONDS * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


async def _watched_user(ctx: Context, email: str | None, user_id: strawberry.ID | None) -> int:
    """The one user this caller may watch: a viewer's own account, or the one staff named."""
    principal = ctx.principal
    if principal is None:
        raise unauthenticated()
    named = email is not None or user_id is not None
    if principal.role == VIEWER:
        if principal.user_id is None:
            raise unauthenticated()
        if named:
            # Never looked up: a viewer learns nothing about other accounts, not even existence.
            raise forbidden("A viewer watches their own account: give neither email nor userId")
        return principal.user_id
    if principal.role not in WATCHING_ROLES:
        raise forbidden(f"The {principal.role} role may not subscribe")
    if (email is not None and user_id is not None) or not named:
        raise BadUserInput("give exactly one of email or userId")
    if user_id is not None:
        found = parse_row_id(str(user_id))
        if found is not None:
            async with ctx.db.connect() as conn:
                if await accounts_at_position(conn, [found]):
                    return found
    else:
        async with ctx.db.connect() as conn:
            (row,) = await users_by_email(conn, [normalize_email(email or "")])
        if row is not None:
            return int(row.id)
    raise BadUserInput("No such user")

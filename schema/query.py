"""The Query root: the viewer's own account, staff look-ups, plans and the change history."""

from __future__ import annotations

import strawberry
from sqlalchemy import select
from strawberry import Info

from resolvers import changes, credits
from resolvers.models import CreditEvent as CreditEventRow
from resolvers.models import User as UserRow
from resolvers.users import normalize_email
from schema import permissions
from schema.connections import Connection, connection, decode_cursor, page_size
from schema.context import VIEWER, BadUserInput, Context
from schema.types import CreditEvent, EntitlementChange, Plan, TierChange, User

MAX_SEARCH_LENGTH = 320


async def fresh_user(ctx: Context, row: UserRow | None) -> UserRow | None:
    """The row, after granting a due monthly allowance, so a read shows this month's credits."""
    if row is None or not credits.is_allowance_due(row, ctx.clock()):
        return row
    return await ctx.db.write(
        lambda session: credits.refresh_balance(
            session, row.id, catalog=ctx.catalog, now=ctx.clock(), actor=ctx.actor("system")
        )
    )


@strawberry.type
class Query:
    @strawberry.field(
        permission_classes=[permissions.ANY_CALLER],
        description="The caller's own account (end-user token); null for API keys.",
    )
    async def viewer(self, info: Info) -> User | None:
        ctx: Context = info.context
        principal = ctx.principal
        if principal is None or principal.role != VIEWER or principal.user_id is None:
            return None
        row = await fresh_user(ctx, await ctx.loaders.user_by_id.load(principal.user_id))
        return User(row=row) if row is not None else None

    @strawberry.field(
        permission_classes=[permissions.STAFF_READ],
        description="One user by email or id (staff keys).",
    )
    async def user(
        self, info: Info, email: str | None = None, id: strawberry.ID | None = None
    ) -> User | None:
        ctx: Context = info.context
        if (email is None) == (id is None):
            raise BadUserInput("give exactly one of email or id")
        if id is not None:
            if not str(id).isdigit():
                return None
            row = await ctx.loaders.user_by_id.load(int(id))
        else:
            row = await ctx.loaders.user_by_email.load(normalize_email(email or ""))
        row = await fresh_user(ctx, row)
        return User(row=row) if row is not None else None

    @strawberry.field(
        permission_classes=[permissions.STAFF_READ],
        description="Users by id; filter by tier, search by email prefix.",
    )
    async def users(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        tier: str | None = None,
        search: str | None = None,
    ) -> Connection[User]:
        ctx: Context = info.context
        size = page_size(first)
        stmt = select(UserRow).order_by(UserRow.id).limit(size + 1)
        if (after_id := decode_cursor(after)) is not None:
            stmt = stmt.where(UserRow.id > after_id)
        if tier is not None:
            stmt = stmt.where(UserRow.tier == tier)
        if search:
            if len(search) > MAX_SEARCH_LENGTH:
                raise BadUserInput(f"search is longer than {MAX_SEARCH_LENGTH} characters")
            prefix = normalize_email(search)
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            stmt = stmt.where(UserRow.email.like(escaped + "%", escape="\\"))
        async with ctx.db.read() as session:
            rows = list((await session.execute(stmt)).scalars())
        for row in rows:
            ctx.loaders.prime_user(row)
        return connection(rows, size, lambda row: User(row=row))

    @strawberry.field(description="The catalog's tiers, with copy in the locale (default en).")
    def plans(self, info: Info, locale: str | None = None) -> list[Plan]:
        catalog = info.context.catalog
        chosen = locale if locale in catalog.locales else catalog.locales[0]
        return [Plan(tier=tier, locale=chosen) for tier in catalog.tiers]

    @strawberry.field(
        permission_classes=[permissions.SUPPORT],
        description="Ledger events and tier changes written under one X-Request-ID, oldest first.",
    )
    async def entitlement_changes(self, info: Info, request_id: str) -> list[EntitlementChange]:
        async with info.context.db.read() as session:
            rows = await changes.changes_by_request_id(session, request_id)
        return [
            CreditEvent.from_row(r) if isinstance(r, CreditEventRow) else TierChange.from_row(r)
            for r in rows
        ]

"""The compiled Query root fields: the same look-ups as schema/query.py, without graphql-core.

Roles are not checked here: the compiler reads each field's permission classes from the schema
and the executor checks them before the field runs.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.compiled.driver import USERS_BY_EMAIL
from gateway.compiled.fields import Page
from gateway.compiled.resolver import Args, Resolver, batch, with_run
from gateway.compiled.run import Fallback, Run
from resolvers.catalog import pricing
from resolvers.errors import InvalidInput
from resolvers.ledger import changes
from resolvers.models import Payment, parse_row_id
from resolvers.users import normalize_email, users_page_statement
from schema.connections import decode_cursor, page_size
from schema.context import VIEWER
from schema.query import MAX_SEARCH_LENGTH

PAYMENTS = Payment.__table__


async def _viewer(run: Run, _roots: list[None], _args: Args) -> list[Any]:
    principal = run.context.principal
    if principal is None or principal.role != VIEWER or principal.user_id is None:
        return [None]
    return await run.users_by_id([principal.user_id])


async def _user(run: Run, _roots: list[None], args: Args) -> list[Any]:
    email, user_id = args.get("email"), args.get("id")
    if (email is None) == (user_id is None):
        raise Fallback("give exactly one of email or id")
    if user_id is not None:
        if (row_id := parse_row_id(str(user_id))) is None:
            return [None]
        return await run.users_by_id([row_id])
    rows = await run.fetch(USERS_BY_EMAIL, [normalize_email(email)])
    run.remember_users(rows)
    return [rows[0] if rows else None]


async def _users(run: Run, _roots: list[None], args: Args) -> list[Page]:
    size = page_size(args.get("first"))
    search = args.get("search")
    if search and len(search) > MAX_SEARCH_LENGTH:
        raise Fallback("search too long")
    statement = users_page_statement(
        limit=size + 1,
        after_id=decode_cursor(args.get("after")),
        tier=args.get("tier"),
        email_prefix=search or None,
    )
    rows = list(await (await run.connection()).execute(statement))
    run.remember_users(rows)
    return [Page(rows, size)]


async def _payments(run: Run, _roots: list[None], args: Args) -> list[Page]:
    size = page_size(args.get("first"))
    statement = select(PAYMENTS).order_by(PAYMENTS.c.id.desc()).limit(size + 1)
    if (before := decode_cursor(args.get("after"))) is not None:
        statement = statement.where(PAYMENTS.c.id < before)
    return [Page(list(await (await run.connection()).execute(statement)), size)]


async def _payment(run: Run, _roots: list[None], args: Args) -> list[Any]:
    # As resolvers.billing.payments.find_payment: a row id, else any Stripe id the payment carries.
    ref = args["ref"].strip()
    if (payment_id := parse_row_id(ref)) is not None:
        statement = select(PAYMENTS).where(PAYMENTS.c.id == payment_id)
    else:
        statement = (
            select(PAYMENTS)
            .where(
                or_(
                    PAYMENTS.c.stripe_object_id == ref,
                    PAYMENTS.c.stripe_payment_intent_id == ref,
                    PAYMENTS.c.stripe_charge_id == ref,
                    PAYMENTS.c.stripe_invoice_id == ref,
                )
            )
            .order_by(PAYMENTS.c.id)
            .limit(1)
        )
    return [(await (await run.connection()).execute(statement)).first()]


def _plans(_root: None, run: Run, args: Args) -> list[tuple[Any, str]]:
    catalog = run.catalog
    locale = args.get("locale")
    chosen = locale if locale in catalog.locales else catalog.locales[0]
    return [(tier, chosen) for tier in catalog.tiers]


async def _pricing(run: Run, roots: list[None], args: Args) -> list[pricing.Pricing]:
    context = run.context
    (viewer,) = await _viewer(run, roots, {})
    page = pricing.pricing_page(
        catalog=run.catalog,
        locale=args.get("locale"),
        currency=args.get("currency"),
        viewer=viewer,
        accept_language=context.accept_language,
        app_base_url=context.app_base_url,
    )
    if isinstance(page, InvalidInput):
        raise Fallback("refused currency: graphql-core gives the error")
    return [page]


async def _entitlement_changes(run: Run, _roots: list[None], args: Args) -> list[list[Any]]:
    # The resolvers' own read, on this request's connection: the rows are the ORM objects the
    # Strawberry resolver gets, so the union's member is told apart by their class.
    async with AsyncSession(bind=await run.connection()) as session:
        rows = await changes.changes_by_request_id(session, args["requestId"])
    return [rows]


# The arguments each compiled root field reads (see fields.FIELD_ARGUMENTS).
ROOT_ARGUMENTS: dict[tuple[str, str], frozenset[str]] = {
    ("Query", "user"): frozenset({"email", "id"}),
    ("Query", "users"): frozenset({"first", "after", "tier", "search"}),
    ("Query", "plans"): frozenset({"locale"}),
    ("Query", "payment"): frozenset({"ref"}),
    ("Query", "payments"): frozenset({"first", "after"}),
    ("Query", "pricing"): frozenset({"locale", "currency"}),
    ("Query", "entitlementChanges"): frozenset({"requestId"}),
}

ROOTS: dict[str, Resolver] = {
    "viewer": batch(_viewer),
    "user": batch(_user),
    "users": batch(_users, on_loop=False),
    "plans": with_run(_plans),
    "payments": batch(_payments, on_loop=False),
    "payment": batch(_payment, on_loop=False),
    "pricing": batch(_pricing),
    "entitlementChanges": batch(_entitlement_changes, on_loop=False),
}

"""The compiled Query root fields: the same look-ups as schema/query.py, without graphql-core.

Roles are not checked here: the compiler reads each field's permission classes from the schema
and the executor checks them before the field runs.
"""

from __future__ import annotations

from typing import Any

from gateway.compiled.fields import Page
from gateway.compiled.resolver import Args, Resolver, batch, with_run
from gateway.compiled.run import Fallback, Run
from resolvers import loaders
from resolvers.models import parse_row_id
from resolvers.users import normalize_email, users_page_statement
from schema.connections import decode_cursor, page_size
from schema.context import VIEWER
from schema.query import MAX_SEARCH_LENGTH


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
    (row,) = await loaders.users_by_email(await run.connection(), [normalize_email(email)])
    if row is not None:
        run.remember_users([row])
    return [row]


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


def _plans(_root: None, run: Run, args: Args) -> list[tuple[Any, str]]:
    catalog = run.catalog
    locale = args.get("locale")
    chosen = locale if locale in catalog.locales else catalog.locales[0]
    return [(tier, chosen) for tier in catalog.tiers]


# The arguments each compiled root field reads (see fields.FIELD_ARGUMENTS).
ROOT_ARGUMENTS: dict[tuple[str, str], frozenset[str]] = {
    ("Query", "user"): frozenset({"email", "id"}),
    ("Query", "users"): frozenset({"first", "after", "tier", "search"}),
    ("Query", "plans"): frozenset({"locale"}),
}

ROOTS: dict[str, Resolver] = {
    "viewer": batch(_viewer),
    "user": batch(_user),
    "users": batch(_users),
    "plans": with_run(_plans),
}

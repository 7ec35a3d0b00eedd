"""Compiled fields of the mutation results: the payloads and the typed errors of their unions.

The values are what the shared writes return (schema.mutation's run_consume_credits and the
like): Strawberry objects, read here as their own fields read them. A payload's user is its
row, a payload's event or change a CreditEvent or TierChange object with the attributes of the
row it was made from, so the compiled fields of those types read it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any

from gateway.compiled.mirrored import mirrored
from gateway.compiled.resolver import Args, Resolver, attr, batch, source, with_run
from gateway.compiled.run import Run
from schema.errors import SHOWN_AS, HoldStatus


def _graphql_name(value: Any) -> str:
    return type(value).__strawberry_definition__.name  # type: ignore[no-any-return]


def _user_row(payload: Any) -> Any:
    return payload.user.row


async def _hold_users(run: Run, held: list[Any], _args: Args) -> list[Any]:
    return await run.users_by_id([h.row.user_id for h in held])


def _hold_status(hold: Any, run: Run, _args: Args) -> str:
    # As schema.holds.CreditHold.status for a hold shown now (a mutation's is never as_of).
    row = hold.row
    if row.status == "active" and row.expires_at <= run.now:
        return HoldStatus.EXPIRED.name
    return HoldStatus(row.status).name


def _of_row(read: Callable[[Any], Any]) -> Resolver:
    return source(lambda hold: read(hold.row))


def _isoformat(value: Any) -> str | None:
    return None if value is None else value.isoformat()


# The mutation result unions answered compiled; each value is its own GraphQL type.
_UNIONS = (
    "CreditChangeResult",
    "SetTierResult",
    "ReserveCreditsResult",
    "ReleaseHoldResult",
    "RecordUsageResult",
    "SetEntitlementOverrideResult",
)
PAYLOAD_TYPE_OF: dict[str, Callable[[Any], str]] = dict.fromkeys(_UNIONS, _graphql_name)

PAYLOAD_FIELDS: dict[str, dict[str, Resolver]] = {
    "CreditChange": {
        "user": source(_user_row),
        "event": attr("event"),
        "replayed": attr("replayed"),
    },
    "TierUpdate": {
        "user": source(_user_row),
        "change": attr("change"),
        "replayed": attr("replayed"),
    },
    # Its entitlement is schema.entitlements.Entitlement, read by the compiled Entitlement fields.
    "EntitlementUsage": {
        "user": source(_user_row),
        "entitlement": attr("entitlement"),
        "quantity": attr("quantity"),
        "replayed": attr("replayed"),
    },
    "EntitlementOverrideChange": {
        "user": source(_user_row),
        "override": attr("override_row"),
        "entitlement": attr("entitlement"),
        "replayed": attr("replayed"),
    },
    "CreditHold": {
        "id": _of_row(lambda row: str(row.id)),
        "user": batch(_hold_users),
        "amount": _of_row(attrgetter("amount")),
        "reason": _of_row(attrgetter("reason")),
        "status": with_run(_hold_status),
        "expiresAt": _of_row(lambda row: _isoformat(row.expires_at)),
        "createdAt": _of_row(lambda row: _isoformat(row.created_at)),
        "settledAmount": _of_row(attrgetter("settled_amount")),
    },
    # Every typed error: a Strawberry dataclass whose fields are its GraphQL fields.
    **{
        error_type.__strawberry_definition__.name: mirrored(error_type)  # type: ignore[attr-defined]
        for error_type, _converted in SHOWN_AS.values()
    },
}

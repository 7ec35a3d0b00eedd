"""Reads of the compiled path on the driver itself (asyncpg, aiosqlite), past SQLAlchemy.

Profiled under the viewer read, SQLAlchemy's per-statement work (a connection wrapper, the
greenlet hop, rendering the expanding IN list, the execution context, events) cost more of the
process than the one row it returned. These statements are compiled once per database with a
single parameter for the keys (`= ANY($1)`; SQLite: a JSON array through `json_each`), so one
text serves any number of keys and asyncpg prepares each once per connection (its statement
cache). Rows come back as the same values SQLAlchemy would give: each column's result processor
(UTC datetimes, SQLite's booleans) is applied, and fields are read by name as on a Row. The
engine's statement events still fire (statement counts, OpenTelemetry's SQL spans).
"""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Integer,
    Select,
    String,
    Table,
    bindparam,
    func,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.dialects.sqlite.aiosqlite import dialect as aiosqlite_dialect
from sqlalchemy.engine import Connection, Dialect, Engine

from gateway.local_reads import Snapshot
from resolvers.models import CreditEvent, CreditGrant, Payment, User

Match = Callable[[ColumnElement[Any]], ColumnElement[bool]]


def _any_of_array(column: ColumnElement[Any]) -> ColumnElement[bool]:
    key_type = String if isinstance(column.type, String) else Integer
    return column == func.any(bindparam("keys", type_=ARRAY(key_type)))


def _in_json_array(column: ColumnElement[Any]) -> ColumnElement[bool]:
    # SQLite has no arrays: the keys travel as one JSON text, so one statement serves any count.
    keys = select(literal_column("value")).select_from(
        func.json_each(bindparam("keys", type_=String))
    )
    return column.in_(keys)


class _Variant:
    """A statement as one driver runs it: its text, its parameters and the result processors."""

    def __init__(
        self, columns: list[Column[Any]], statement: Select[Any], dialect: Dialect
    ) -> None:
        compiled = statement.compile(dialect=dialect)
        self.parameters = tuple(compiled.positiontup or ())
        assert self.parameters[:1] == ("keys",), "the keys come first"
        self.sql = str(compiled)
        processors = [c.type._cached_result_processor(dialect, None) for c in columns]
        self.processed: list[tuple[int, Callable[[Any], Any]]] = [
            (i, p) for i, p in enumerate(processors) if p is not None
        ]


class DriverRead:
    """One SELECT of a table's columns by a list of keys (integers, or text for a text column),
    for asyncpg, aiosqlite and the loop's own SQLite reads (gateway.local_reads).

    `columns` (default: all of the table's) are what `build` selects, in that order; further
    parameters of the statement are given by name to `fetch`.
    """

    def __init__(
        self,
        table: Table,
        build: Callable[[Match], Select[Any]],
        key: str,
        columns: list[Column[Any]] | None = None,
    ) -> None:
        columns = list(table.c) if columns is None else columns
        # The field naming the key each row belongs to: requests' reads join on it
        # (gateway.read_batches).
        self.key = key
        self.row = namedtuple(table.name, [c.name for c in columns])  # type: ignore[misc]
        self.postgresql = _Variant(columns, build(_any_of_array), asyncpg_dialect())
        self.sqlite = _Variant(columns, build(_in_json_array), aiosqlite_dialect())

    async def fetch(
        self, connection: Connection | Engine, driver: Any, keys: Sequence[int], **named: Any
    ) -> list[Any]:
        """Rows for `keys` on `driver`, the asyncpg or aiosqlite connection of `connection`'s pool.

        The engine's statement events fire on `connection`.
        """
        sqlite = connection.dialect.name == "sqlite"
        variant = self.sqlite if sqlite else self.postgresql
        parameters = _parameters(variant, sqlite, keys, named)
        context = SimpleNamespace()  # where a listener may keep state between its two events
        dispatch = connection.dispatch
        dispatch.before_cursor_execute(connection, None, variant.sql, parameters, context, False)
        if sqlite:
            records = await driver.execute_fetchall(variant.sql, parameters)
        else:
            records = await driver.fetch(variant.sql, *parameters)
        dispatch.after_cursor_execute(connection, None, variant.sql, parameters, context, False)
        return self._rows(variant, records)

    def fetch_local(self, snapshot: Snapshot, keys: Sequence[Any], **named: Any) -> list[Any]:
        """Rows for `keys` read in `snapshot` (gateway.local_reads), on the loop, as `fetch`'s."""
        variant = self.sqlite
        parameters = _parameters(variant, True, keys, named)
        context = SimpleNamespace()
        events = snapshot.events
        dispatch = events.dispatch
        dispatch.before_cursor_execute(events, None, variant.sql, parameters, context, False)
        records = snapshot.fetchall(variant.sql, parameters)
        dispatch.after_cursor_execute(events, None, variant.sql, parameters, context, False)
        return self._rows(variant, records)

    def _rows(self, variant: _Variant, records: Iterable[Any]) -> list[Any]:
        make, processed = self.row._make, variant.processed
        rows = []
        for record in records:
            values = list(record)
            for i, process in processed:
                values[i] = process(values[i])
            rows.append(make(values))
        return rows


def _parameters(
    variant: _Variant, sqlite: bool, keys: Sequence[Any], named: dict[str, Any]
) -> tuple[Any, ...]:
    named["keys"] = json.dumps(list(keys)) if sqlite else list(keys)
    return tuple(named[name] for name in variant.parameters)


def _newest_per_user(table: Table, columns: list[Column[Any]]) -> DriverRead:
    """Each user's newest `limit` rows below the `before` id, newest first, in one statement.

    As resolvers.loaders reads a user's page, minus the columns no compiled field reads.
    """

    def build(match: Match) -> Select[Any]:
        rank = func.row_number().over(partition_by=table.c.user_id, order_by=table.c.id.desc())
        ranked = (
            select(*columns, rank.label("rank"))
            .where(match(table.c.user_id), table.c.id < bindparam("before", type_=BigInteger))
            .subquery()
        )
        return (
            select(*(ranked.c[c.name] for c in columns))
            .where(ranked.c.rank <= bindparam("limit", type_=Integer))
            .order_by(ranked.c.user_id, ranked.c.id.desc())
        )

    return DriverRead(table, build, "user_id", columns)


_USERS = User.__table__
_GRANTS = CreditGrant.__table__

USERS_BY_ID = DriverRead(_USERS, lambda match: select(_USERS).where(match(_USERS.c.id)), "id")
# As resolvers.loaders.users_by_email: the caller gives normalized (lower-cased) addresses.
USERS_BY_EMAIL = DriverRead(
    _USERS, lambda match: select(_USERS).where(match(_USERS.c.email)), "email"
)
# As resolvers.loaders reads them: credits left, soonest expiry first (none last), then oldest.
OPEN_GRANTS = DriverRead(
    _GRANTS,
    lambda match: (
        select(_GRANTS)
        .where(match(_GRANTS.c.user_id), _GRANTS.c.remaining > literal_column("0"))
        .order_by(_GRANTS.c.expires_at.asc().nulls_last(), _GRANTS.c.id)
    ),
    "user_id",
)

_EVENTS = CreditEvent.__table__
_PAYMENTS = Payment.__table__
# Without `allocations`: no compiled field reads it, and decoding its JSON was the largest part
# of reading a support page of 100 users' events.
NEWEST_EVENTS = _newest_per_user(_EVENTS, [c for c in _EVENTS.c if c.name != "allocations"])
NEWEST_PAYMENTS = _newest_per_user(_PAYMENTS, list(_PAYMENTS.c))

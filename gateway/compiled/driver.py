"""PostgreSQL reads of the compiled path on asyncpg itself: no SQLAlchemy work per statement.

Profiled under the viewer read, SQLAlchemy's per-statement work (a connection wrapper, the
greenlet hop, rendering the expanding IN list, the execution context, events) cost more of the
process than the one row it returned. These statements are compiled once, with `= ANY($1)`
so that one text serves any number of keys, and asyncpg prepares each once per connection (its
statement cache). Rows come back as the same values SQLAlchemy would give: each column's
result processor (UTC datetimes) is applied, and fields are read by name as on a Row. The
engine's statement events still fire (statement counts, OpenTelemetry's SQL spans).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Integer, Select, Table, bindparam, func, literal_column, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import Connection

from resolvers.models import CreditGrant, User

_DIALECT = asyncpg_dialect()
_KEYS = bindparam("keys", type_=ARRAY(Integer))


class DriverRead:
    """One SELECT of a table's columns by a list of integer keys, ready for asyncpg."""

    def __init__(self, table: Table, statement: Select[Any]) -> None:
        compiled = statement.compile(dialect=_DIALECT)
        assert list(compiled.positiontup or ()) == ["keys"], "one parameter: the keys"
        self.sql = str(compiled)
        self.row = namedtuple(table.name, [c.name for c in table.c])  # type: ignore[misc]
        processors = [c.type._cached_result_processor(_DIALECT, None) for c in table.c]
        self._processed: list[tuple[int, Callable[[Any], Any]]] = [
            (i, p) for i, p in enumerate(processors) if p is not None
        ]

    async def fetch(self, connection: Connection, driver: Any, keys: Sequence[int]) -> list[Any]:
        """Rows for `keys` on `driver`, the asyncpg connection under `connection`."""
        parameters = (list(keys),)
        context = SimpleNamespace()  # where a listener may keep state between its two events
        dispatch = connection.dispatch
        dispatch.before_cursor_execute(connection, None, self.sql, parameters, context, False)
        records = await driver.fetch(self.sql, *parameters)
        dispatch.after_cursor_execute(connection, None, self.sql, parameters, context, False)
        make, processed = self.row._make, self._processed
        rows = []
        for record in records:
            values = list(record)
            for i, process in processed:
                values[i] = process(values[i])
            rows.append(make(values))
        return rows


_USERS = User.__table__
_GRANTS = CreditGrant.__table__

USERS_BY_ID = DriverRead(_USERS, select(_USERS).where(_USERS.c.id == func.any(_KEYS)))
# As resolvers.loaders reads them: credits left, soonest expiry first (none last), then oldest.
OPEN_GRANTS = DriverRead(
    _GRANTS,
    select(_GRANTS)
    .where(_GRANTS.c.user_id == func.any(_KEYS), _GRANTS.c.remaining > literal_column("0"))
    .order_by(_GRANTS.c.expires_at.asc().nulls_last(), _GRANTS.c.id),
)

"""Core statements of the write paths, sent to the driver inside the session's transaction.

SQLAlchemy's `Connection.execute` spends about 90 µs of CPU per statement around asyncpg's own
work: the compiled cache's lookup, an execution context, a greenlet hop into the adapter's
cursor, the result's metadata. A Stripe webhook's transaction sends six statements, so that was
a third of its time (measured in one process: six statements in a session's transaction, 1,250
µs through `Connection.execute`, 730 µs straight on the driver). On SQLite the adapter's cursor
also takes four hops to aiosqlite's thread per statement (cursor, execute, fetch, close) where
`execute_fetchall` takes one. A change sends the same few statements every time, so `execute`
compiles each once per set of parameter names, as SQLAlchemy would, and afterwards only binds
its values in order and reads the rows back by position.

What SQLAlchemy would do is kept: the statement's text, its bind and result processors and
scalar column defaults come from SQLAlchemy's own compilation; the transaction is the session's
(on PostgreSQL begun as its adapter begins it, under its lock; on SQLite begun by the session,
gateway.sqlite_setup); statement events fire (statement counts, tracing); a failure goes through
the Connection's own error handler, so it is raised as the same `DBAPIError` subclass (the unit
of work's retries see a lost race as before), a lost connection invalidates the pool, and one
cancelled mid-statement is never lent again. A list of parameter sets, SQLite's statements that
return no rows (their row count is the cursor's), and a statement that needs more of
SQLAlchemy's execution (callable defaults, expanding IN lists, implicit RETURNING, a type that
reads the cursor) go through `Connection.execute`. Plans are compiled once per process and
dialect: the gateway's engines of one database are all configured alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from types import SimpleNamespace
from typing import Any, NoReturn

from sqlalchemy import exc
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql import Executable
from sqlalchemy.sql.compiler import SQLCompiler

Processor = Callable[[Any], Any]


class PreparedRow(tuple[Any, ...]):
    """A row read by position, by attribute and through `_mapping`, as SQLAlchemy's `Row` is."""

    __slots__ = ()
    _keys: tuple[str, ...] = ()

    @property
    def _mapping(self) -> dict[str, Any]:
        return dict(zip(self._keys, self, strict=True))


class PreparedResult:
    """The part of SQLAlchemy's `Result` the write paths use; rows are read eagerly."""

    __slots__ = ("returns_rows", "rowcount", "rows")

    def __init__(self, rows: list[PreparedRow], rowcount: int, *, returns_rows: bool) -> None:
        self.rows = rows
        self.rowcount = rowcount
        self.returns_rows = returns_rows

    def __iter__(self) -> Iterator[PreparedRow]:
        return iter(self.rows)

    def all(self) -> list[PreparedRow]:
        return list(self.rows)

    def first(self) -> PreparedRow | None:
        return self.rows[0] if self.rows else None

    def one_or_none(self) -> PreparedRow | None:
        if len(self.rows) > 1:
            raise exc.MultipleResultsFound("Multiple rows were found when one or none was required")
        return self.first()

    def one(self) -> PreparedRow:
        if not self.rows:
            raise exc.NoResultFound("No row was found when one was required")
        return self.one_or_none()  # type: ignore[return-value]

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]


@dataclass(frozen=True)
class _Plan:
    """One statement compiled for asyncpg, for one set of parameter names."""

    statement: Executable  # kept: the cache is keyed by its id
    compiled: SQLCompiler
    sql: str
    positions: tuple[str, ...]
    bind_processors: Mapping[str, Processor]
    defaults: Mapping[str, Any]  # scalar column defaults an INSERT or UPDATE leaves out
    row_class: type[PreparedRow] | None  # None: the statement returns no rows
    result_processors: tuple[Processor | None, ...]
    sqlite: bool

    def arguments(self, parameters: Mapping[str, Any]) -> tuple[Any, ...]:
        if self.defaults:
            parameters = {**self.defaults, **parameters}
        values = self.compiled.construct_params(parameters, escape_names=False)
        processors = self.bind_processors
        return tuple(
            processors[name](values[name]) if name in processors else values[name]
            for name in self.positions
        )

    def rows(self, records: Sequence[Any]) -> list[PreparedRow]:
        assert self.row_class is not None
        make = self.row_class
        processors = self.result_processors
        if not any(processors):
            return [make(record) for record in records]
        return [
            make(
                value if process is None else process(value)
                for process, value in zip(processors, record, strict=True)
            )
            for record in records
        ]


async def execute(
    session: AsyncSession,
    statement: Executable,
    parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
) -> Any:
    """Run `statement` in the session's transaction; a `PreparedResult` or SQLAlchemy's result."""
    conn = await session.connection()
    if conn.dialect.name not in _DRIVERS or not isinstance(parameters, Mapping | None):
        return await conn.execute(statement, parameters)
    parameters = parameters or {}
    plan = _plan_of(statement, parameters, conn.dialect)
    if plan is None:
        return await conn.execute(statement, parameters)
    try:
        arguments = plan.arguments(parameters)
    except Exception as error:
        # A value a bind processor refuses (a naive datetime): a StatementError, as from
        # SQLAlchemy, and nothing is sent.
        assert conn.sync_connection is not None
        conn.sync_connection._handle_dbapi_exception(error, plan.sql, parameters, None, None)
    return await _run(conn, plan, arguments)


def is_prepared(statement: Executable, parameters: Mapping[str, Any], dialect: Dialect) -> bool:
    """Whether `execute` sends this statement with these parameter names to the driver itself."""
    return dialect.name in _DRIVERS and _plan_of(statement, parameters, dialect) is not None


async def _run(conn: AsyncConnection, plan: _Plan, arguments: tuple[Any, ...]) -> PreparedResult:
    sync = conn.sync_connection
    assert sync is not None
    pooled = sync.connection
    adapter: Any = pooled.dbapi_connection  # SQLAlchemy's asyncpg or aiosqlite adapter
    driver: Any = adapter._connection  # asyncpg's or aiosqlite's Connection
    dispatch = sync.dispatch
    context = SimpleNamespace()  # where a listener keeps its state between the two events
    dispatch.before_cursor_execute(sync, None, plan.sql, arguments, context, False)
    try:
        # As the adapter's cursor runs a statement: one at a time on the connection, and BEGIN
        # first unless its transaction is open, so the session's COMMIT or ROLLBACK ends it.
        async with adapter._execute_mutex:
            if plan.sqlite:
                # One hop to aiosqlite's thread, where its cursor takes four; the session's
                # BEGIN (IMMEDIATE for writes, gateway.sqlite_setup) was sent when it began.
                records = await driver.execute_fetchall(plan.sql, arguments)
                result = PreparedResult(plan.rows(records), len(records), returns_rows=True)
            else:
                if adapter._transaction is None:
                    await adapter._start_transaction()
                if plan.row_class is None:
                    status = await driver.execute(plan.sql, *arguments)
                    result = PreparedResult([], _rowcount(status), returns_rows=False)
                else:
                    records = await driver.fetch(plan.sql, *arguments)
                    result = PreparedResult(plan.rows(records), len(records), returns_rows=True)
    except BaseException as error:
        _raise_as_sqlalchemy(sync, adapter, plan.sql, arguments, error)
    dispatch.after_cursor_execute(sync, None, plan.sql, arguments, context, False)
    return result


def _raise_as_sqlalchemy(
    sync: Connection, adapter: Any, sql: str, arguments: Any, error: BaseException
) -> NoReturn:
    """Raise as `Connection.execute` would, by its own handler: the adapter's DBAPI error in the
    matching `DBAPIError` subclass, `handle_error` events, and a connection that was lost, or
    left mid-statement by a cancellation, invalidated (with the pool, when lost)."""
    dbapi_error = sync.dialect.loaded_dbapi.Error
    if isinstance(error, Exception) and not isinstance(error, dbapi_error):
        try:
            adapter._handle_exception(error)  # always raises: the driver's error, translated
        except Exception as translated:
            if isinstance(translated, dbapi_error):
                sync._handle_dbapi_exception(translated, sql, arguments, None, None)
            # Not a DBAPI error (sqlite3's OverflowError for an int past 64 bits): SQLAlchemy
            # lets it through as it is once a statement was under way, and so does this.
            raise
    sync._handle_dbapi_exception(error, sql, arguments, None, None)


def _rowcount(status: str) -> int:
    # asyncpg's status line: "UPDATE 3", "DELETE 0", "INSERT 0 1".
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else -1


_DRIVERS = ("postgresql", "sqlite")
# The write paths' statements are built once, at import, and a few on first use: a few dozen
# plans. A statement built per call would fill this; past the cap it runs on SQLAlchemy.
MAX_PLANS = 512
# Each kept with its statement: a statement in the cache stays alive, so its id is not reused.
_PLANS: dict[tuple[int, str, tuple[str, ...]], tuple[Executable, _Plan | None]] = {}


def _plan_of(
    statement: Executable, parameters: Mapping[str, Any], dialect: Dialect
) -> _Plan | None:
    names = tuple(sorted(parameters))
    key = (id(statement), dialect.name, names)
    kept = _PLANS.get(key)
    if kept is None:
        if len(_PLANS) >= MAX_PLANS:
            return None
        kept = _PLANS[key] = (statement, _compile(statement, names, dialect))
    return kept[1]


def _compile(statement: Executable, names: tuple[str, ...], dialect: Dialect) -> _Plan | None:
    """The plan SQLAlchemy's execution would follow, or None where it does more than this."""
    try:
        return _compiled(statement, names, dialect)
    except Exception:
        # A processor that needs the cursor's description (Numeric), or a statement this does
        # not know: SQLAlchemy runs it, and raises any error of its own there.
        return None


def _compiled(statement: Executable, names: tuple[str, ...], dialect: Dialect) -> _Plan | None:
    # As Connection.execute compiles it: an INSERT or UPDATE sets the columns named.
    compiled: Any = statement.compile(dialect=dialect, column_keys=list(names))
    if (
        compiled.literal_execute_params
        or compiled.post_compile_params
        or getattr(compiled, "implicit_returning", None)
        or compiled.schema_translate_map
        or compiled.isplaintext
        or not compiled.positional
    ):
        return None
    defaults: dict[str, Any] = {}
    for column in (*compiled.insert_prefetch, *compiled.update_prefetch):
        default = column.default if column in compiled.insert_prefetch else column.onupdate
        if default is None or not default.is_scalar:
            return None
        defaults[column.key] = default.arg
    # Rows come back from a SELECT and from RETURNING; none from other DML.
    columns = compiled._result_columns
    sqlite = dialect.name == "sqlite"
    if sqlite and not columns:
        return None  # aiosqlite's one-hop call answers rows, not a count of rows changed
    row_class = _row_class(tuple(column.keyname for column in columns)) if columns else None
    processors = tuple(column.type._cached_result_processor(dialect, None) for column in columns)
    return _Plan(
        statement=statement,
        compiled=compiled,
        sql=compiled.string,
        positions=tuple(compiled.positiontup),
        bind_processors=dict(compiled._bind_processors),
        defaults=defaults,
        row_class=row_class,
        result_processors=processors,
        sqlite=sqlite,
    )


def _row_class(keys: tuple[str, ...]) -> type[PreparedRow]:
    attributes: dict[str, Any] = {"__slots__": (), "_keys": keys}
    for index, key in enumerate(keys):
        if key.isidentifier() and key not in attributes and not hasattr(tuple, key):
            attributes[key] = property(itemgetter(index))
    return type("PreparedRow", (PreparedRow,), attributes)

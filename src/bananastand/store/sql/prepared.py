"""Core statements compiled once per dialect and run straight on the driver's cursor.

For the few statements on the hottest paths (recordInfo polls, createTask's INSERT):
SQLAlchemy's work per execution (cache key, parameter and result processing) costs
several times the statement itself on SQLite. The statement is still written in Core, so
it stays portable; only columns without type processing (strings, integers) fit.

An INSERT needs no answer before COMMIT: where the writer's runner can send statements
without waiting for each one's result (``SendAhead``, PostgreSQL's pipeline mode), the
INSERTs of a group go out one after the other and are answered together. Their errors
then arrive later (at the next statement that waits, at the latest before COMMIT), still
inside the transaction, which the runner rolls back as for any other error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import ClauseElement, Connection, Select, Table, insert
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.sql.compiler import SQLCompiler

#: Key of ``Connection.info`` under which a runner puts its ``SendAhead`` for the length
#: of one write transaction (absent: every statement waits for its result).
SEND_AHEAD = "bananastand_send_ahead"


class SendAhead(Protocol):
    def start(self) -> None:
        """From here on, send statements without waiting for their results, until one
        needs its result or the transaction ends (the runner's to see to)."""


def driver_error(
    connection: Connection, exc: Any, statement: str | None, params: Any
) -> StatementError:
    """The driver's ``exc`` as ``Connection.execute`` would raise it (IntegrityError...),
    for paths that talk to the driver themselves; a lost connection is dropped first, so
    that the runner's next unit of work gets a new one."""
    dialect = connection.dialect
    dbapi_connection = connection.connection
    lost = dialect.is_disconnect(exc, dbapi_connection, None)
    if lost:
        connection.invalidate(exc)
    error: StatementError = DBAPIError.instance(
        statement, params, exc, dialect.loaded_dbapi.Error, connection_invalidated=lost
    )
    return error


class _Prepared:
    """On a connection in a transaction, it runs inside that transaction."""

    def __init__(self, statement: ClauseElement, column_keys: Sequence[str] | None = None) -> None:
        self._statement = statement
        self._column_keys = list(column_keys) if column_keys is not None else None
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None]] = {}

    def _execute(
        self, connection: Connection, params: Mapping[str, Any], ahead: SendAhead | None = None
    ) -> Any:
        dialect = connection.dialect
        entry = self._compiled.get(dialect.name)
        if entry is None:
            compiled = self._statement.compile(dialect=dialect, column_keys=self._column_keys)
            assert isinstance(compiled, SQLCompiler)
            order = tuple(compiled.positiontup or ()) if dialect.positional else None
            entry = self._compiled[dialect.name] = (str(compiled), order)
        sql, order = entry
        values = tuple(params[name] for name in order) if order else params
        cursor = connection.connection.cursor()
        try:
            if ahead is not None:
                ahead.start()
            cursor.execute(sql, values)
        except dialect.loaded_dbapi.Error as exc:
            cursor.close()
            raise driver_error(connection, exc, sql, values) from exc
        return cursor


class PreparedQuery(_Prepared):
    """A SELECT of one row (``first``) or a few (``all``) (see ``_Prepared``)."""

    def __init__(self, statement: Select[Any]) -> None:
        super().__init__(statement)
        self._columns = [str(column.key) for column in statement.selected_columns]

    def first(self, connection: Connection, **params: Any) -> dict[str, Any] | None:
        cursor = self._execute(connection, params)
        try:
            # Sent ahead of its result, a statement's error may come with this fetch.
            row = cursor.fetchone()
        except connection.dialect.loaded_dbapi.Error as exc:
            raise driver_error(connection, exc, None, params) from exc
        finally:
            cursor.close()
        return dict(zip(self._columns, row, strict=True)) if row is not None else None

    def all(self, connection: Connection, **params: Any) -> list[dict[str, Any]]:
        cursor = self._execute(connection, params)
        try:
            rows = cursor.fetchall()
        finally:
            cursor.close()
        return [dict(zip(self._columns, row, strict=True)) for row in rows]


class PreparedInsert(_Prepared):
    """An INSERT of one row that sets exactly ``columns`` (see ``_Prepared``); the table's
    server defaults fill the rest."""

    def __init__(self, table: Table, columns: Sequence[str]) -> None:
        super().__init__(insert(table), column_keys=columns)

    def run(self, connection: Connection, values: Mapping[str, Any]) -> None:
        """Sent ahead of its result where the runner allows it (see the module's doc)."""
        self._execute(connection, values, connection.info.get(SEND_AHEAD)).close()

"""Core statements compiled once per dialect and run straight on the driver's cursor.

For the few statements on the hottest paths (recordInfo polls, createTask's INSERT):
SQLAlchemy's work per execution (cache key, parameter and result processing) costs
several times the statement itself on SQLite. The statement is still written in Core, so
it stays portable; only columns without type processing (strings, integers) fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ClauseElement, Connection, Select, Table, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler


class _Prepared:
    """On a connection in a transaction, it runs inside that transaction."""

    def __init__(self, statement: ClauseElement, column_keys: Sequence[str] | None = None) -> None:
        self._statement = statement
        self._column_keys = list(column_keys) if column_keys is not None else None
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None]] = {}

    def _execute(self, connection: Connection, params: Mapping[str, Any]) -> Any:
        dialect = connection.dialect
        entry = self._compiled.get(dialect.name)
        if entry is None:
            compiled = self._statement.compile(dialect=dialect, column_keys=self._column_keys)
            assert isinstance(compiled, SQLCompiler)
            order = tuple(compiled.positiontup or ()) if dialect.positional else None
            entry = self._compiled[dialect.name] = (str(compiled), order)
        sql, order = entry
        values = tuple(params[name] for name in order) if order else params
        dbapi_connection = connection.connection
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(sql, values)
        except dialect.loaded_dbapi.Error as exc:
            # What ``Connection.execute`` does on a lost connection, which this path skips:
            # drop the connection, so that the runner's next unit of work gets a new one.
            lost = dialect.is_disconnect(exc, dbapi_connection, cursor)
            cursor.close()
            if lost:
                connection.invalidate(exc)
            # The same exception classes as through ``Connection.execute`` (IntegrityError...).
            raise DBAPIError.instance(
                sql, values, exc, dialect.loaded_dbapi.Error, connection_invalidated=lost
            ) from exc
        return cursor


class PreparedQuery(_Prepared):
    """A SELECT of one row (``first``) or a few (``all``) (see ``_Prepared``)."""

    def __init__(self, statement: Select[Any]) -> None:
        super().__init__(statement)
        self._columns = [str(column.key) for column in statement.selected_columns]

    def first(self, connection: Connection, **params: Any) -> dict[str, Any] | None:
        cursor = self._execute(connection, params)
        try:
            row = cursor.fetchone()
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
        self._execute(connection, values).close()

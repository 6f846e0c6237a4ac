"""The writer's statements sent ahead of their results: psycopg's pipeline mode.

Each statement the writer waits for is a round trip, and on a busy machine each is also a
switch to the backend and back. A group of creates sends mostly INSERTs, which need no
answer before COMMIT (``store.sql.prepared.PreparedInsert``): from the first of them,
the connection is in pipeline mode and each goes out without waiting; a statement that
needs its result ends the mode first, and so does the end of the transaction. Whatever
the driver answers then, an error among the INSERTs included, is raised there.

Only statements run on the driver's cursor by ``store.sql.prepared`` are sent in pipeline
mode: a fetch there waits for its own result, and the driver raises any earlier error
with it. Everything SQLAlchemy executes ends the mode first (``before_cursor_execute``),
because SQLAlchemy reads a result's columns and row count as soon as the driver returns,
before pipeline mode has them. An error raised where the mode ends belongs to a statement
sent earlier, maybe another write's of the group: the transaction is failed (PostgreSQL
refuses every later statement in it) and the runner undoes the group and runs each write
alone, where the error is its own write's. So that no write could take it for its own
and carry on (a COMMIT of a failed transaction is quietly a ROLLBACK), the transaction
raises it again at its end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
from sqlalchemy import Connection, event
from sqlalchemy.exc import DBAPIError

from bananastand.store.sql.prepared import SEND_AHEAD, driver_error

log = logging.getLogger(__name__)


class Pipeline:
    """A ``SendAhead`` over one psycopg connection, for one transaction."""

    __slots__ = ("_driver", "_open", "failure")

    def __init__(self, driver: psycopg.Connection[Any]) -> None:
        self._driver = driver
        self._open: AbstractContextManager[Any] | None = None
        #: The first error the driver answered at an end of the mode, if any.
        self.failure: Exception | None = None

    def start(self) -> None:
        if self._open is None:
            opened = self._driver.pipeline()
            opened.__enter__()
            self._open = opened

    def end(self) -> None:
        """Wait for every result sent ahead; raises the driver's first error among them."""
        opened, self._open = self._open, None
        if opened is None:
            return
        try:
            opened.__exit__(None, None, None)
        except Exception as exc:
            self.failure = self.failure or exc
            raise

    def abandon(self, exc: BaseException) -> None:
        """Leave the mode after ``exc`` ended the transaction's work (it will be rolled
        back); what the driver says then is not raised over ``exc``."""
        opened, self._open = self._open, None
        if opened is None:
            return
        try:
            opened.__exit__(type(exc), exc, exc.__traceback__)
        except Exception as second:
            log.debug("leaving pipeline mode after %r: %s", exc, second)


@contextmanager
def sending_ahead(connection: Connection) -> Iterator[None]:
    """The ``GroupCommitRunner._sending`` of PostgreSQL (see the module's doc)."""
    driver = connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    pipeline = Pipeline(driver)
    info = connection.info
    info[SEND_AHEAD] = pipeline
    try:
        yield
        try:
            pipeline.end()
        except psycopg.Error as exc:
            raise driver_error(connection, exc, None, None) from exc
        failure = pipeline.failure
        if failure is not None:  # raised earlier, and taken by a write: the transaction failed
            raise DBAPIError.instance(
                None, None, failure, psycopg.Error, connection_invalidated=connection.invalidated
            ) from failure
    except BaseException as exc:
        pipeline.abandon(exc)
        raise
    finally:
        info.pop(SEND_AHEAD, None)


def end_before_sqlalchemy(writer: Connection) -> None:
    """Every statement SQLAlchemy executes on the ``writer`` connection first ends its
    pipeline mode, if on (SQLAlchemy reads results as soon as the driver returns). An
    error raised here is the driver's, which SQLAlchemy wraps as for the statement. Only
    the writer's connection listens: readers never send ahead, and pay nothing for it."""

    @event.listens_for(writer, "before_cursor_execute")
    def _end(connection: Connection, *_args: Any) -> None:
        pipeline: Pipeline | None = connection.info.get(SEND_AHEAD)
        if pipeline is not None:
            pipeline.end()

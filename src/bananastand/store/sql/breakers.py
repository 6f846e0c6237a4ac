"""Queries of the cluster's circuit breakers (``upstream_breakers``): each write one
conditional statement, so that processes failing at once count every failure and only
one of them wins a trial."""

from __future__ import annotations

from sqlalchemy import Connection, and_, case, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError

from bananastand.records import Breaker, BreakerState
from bananastand.store.tables import upstream_breakers as breakers

_OPEN, _HALF_OPEN = BreakerState.OPEN.value, BreakerState.HALF_OPEN.value
_CLOSED = BreakerState.CLOSED.value


def all_breakers(connection: Connection) -> list[Breaker]:
    rows = connection.execute(select(breakers).order_by(breakers.c.name))
    return [Breaker.from_row(row._mapping) for row in rows]


def breaker_failed(
    connection: Connection, name: str, threshold: int, trip: bool, now_ms: int
) -> Breaker:
    """Counted in the row itself (``failures + 1``), never from a value read before."""
    failures = breakers.c.failures + 1
    opens = or_(failures >= threshold, breakers.c.state == _HALF_OPEN, literal(trip))
    counted = connection.execute(
        update(breakers)
        .where(breakers.c.name == name)
        .values(
            failures=failures,
            # One already open stays open since it opened: its cool-down runs on.
            opened_at=case(
                (breakers.c.state == _OPEN, breakers.c.opened_at), (opens, now_ms), else_=None
            ),
            state=case((breakers.c.state == _OPEN, _OPEN), (opens, _OPEN), else_=_CLOSED),
            updated_at=now_ms,
        )
    ).rowcount
    if not counted:
        opened = trip or threshold <= 1
        try:
            with connection.begin_nested():
                connection.execute(
                    insert(breakers).values(
                        name=name,
                        state=_OPEN if opened else _CLOSED,
                        failures=1,
                        opened_at=now_ms if opened else None,
                        updated_at=now_ms,
                    )
                )
        except IntegrityError:  # another process's first failure came first: count on
            return breaker_failed(connection, name, threshold, trip, now_ms)
    row = connection.execute(select(breakers).where(breakers.c.name == name)).one()
    return Breaker.from_row(row._mapping)


def breaker_closed(connection: Connection, name: str, now_ms: int) -> None:
    connection.execute(
        update(breakers)
        .where(breakers.c.name == name)
        .values(state=_CLOSED, failures=0, opened_at=None, updated_at=now_ms)
    )


def breaker_trial(connection: Connection, name: str, cooldown_ms: int, now_ms: int) -> bool:
    since = now_ms - cooldown_ms
    due = or_(
        and_(breakers.c.state == _OPEN, breakers.c.opened_at <= since),
        and_(breakers.c.state == _HALF_OPEN, breakers.c.updated_at <= since),
    )
    taken = connection.execute(
        update(breakers)
        .where(breakers.c.name == name, due)
        .values(state=_HALF_OPEN, updated_at=now_ms)
    )
    return bool(taken.rowcount == 1)

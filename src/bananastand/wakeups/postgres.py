"""Wake-ups over PostgreSQL's LISTEN/NOTIFY: every process of a cluster on one database.

One connection per process listens; another sends ``pg_notify`` in autocommit, after the
change it announces was committed. Never from a per-row trigger: a transaction that
notifies takes a database-wide lock at COMMIT, so notifying from every write would
serialise all committing writers. The hub merges what is published while a send is in
flight, so a process sends at most about one notification per round trip, however many
tasks it writes.

Both connections are psycopg 3 async connections of their own, outside the store's pool:
a listening connection is held for the life of the process and must never be lent to a
query. Behind PgBouncer in transaction mode a LISTEN is lost: ``BANANASTAND_PG_NOTIFY=off``
there, and processes poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "bananastand"
#: How long start-up waits for the first LISTEN before going on (it keeps trying after).
_FIRST_LISTEN_S = 10.0
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 10.0


def libpq_conninfo(url: str) -> str:
    """The libpq form of a SQLAlchemy URL (``postgresql+psycopg://`` has a driver name)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresBus:
    def __init__(self, url: str) -> None:
        # Keepalives bound how long a silently dead link goes unnoticed (~25 s).
        self._conninfo = make_conninfo(
            libpq_conninfo(url),
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        self._listener: asyncio.Task[None] | None = None
        self._sender: psycopg.AsyncConnection[object] | None = None
        self._send_lock = asyncio.Lock()

    async def _connect(self) -> psycopg.AsyncConnection[object]:
        connection: psycopg.AsyncConnection[object] = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True
        )
        return connection

    async def start(
        self, receive: Callable[[bytes | str], None], reconnected: Callable[[], None]
    ) -> None:
        listening = asyncio.Event()
        self._listener = asyncio.get_running_loop().create_task(
            self._listen(receive, reconnected, listening), name="pg-listen"
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_FIRST_LISTEN_S):
                await listening.wait()

    async def _listen(
        self,
        receive: Callable[[bytes | str], None],
        reconnected: Callable[[], None],
        listening: asyncio.Event,
    ) -> None:
        delay = _RETRY_FIRST_S
        missed = False
        while True:
            try:
                async with await self._connect() as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    listening.set()
                    delay = _RETRY_FIRST_S
                    if missed:
                        log.info("listening for wake-ups again")
                        reconnected()
                    async for notification in connection.notifies():
                        receive(notification.payload)
            except psycopg.Error as exc:
                log.warning("wake-ups: lost the listening connection (%s); polling meanwhile", exc)
            missed = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)

    async def send(self, payload: bytes) -> None:
        async with self._send_lock:
            for attempt in (1, 2):  # once more on a fresh connection: the old one may be stale
                try:
                    if self._sender is None or self._sender.closed:
                        self._sender = await self._connect()
                    await self._sender.execute(
                        "SELECT pg_notify(%s, %s)", (CHANNEL, payload.decode())
                    )
                    return
                except psycopg.OperationalError:
                    await self._close_sender()
                    if attempt == 2:
                        raise

    async def _close_sender(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            with contextlib.suppress(psycopg.Error):
                await sender.close()

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._close_sender()

"""Callers that want values by key at the same moment share one fetch.

Why: fetching one row by its key costs far more around the query than in it. On a
threaded runner a lookup is a hop to a reader thread and back, a database round trip and
a statement; with many clients polling at once, one hop per request also means as many
threads passing the GIL around, and some lookups wait very long for it (on PostgreSQL the
p99 of recordInfo was 0.2-1 s). One fetch of every key that is waiting pays those costs
once for all of them.

How: a caller's key waits for the next batch. A batch starts as soon as fewer than
``max_in_flight`` are running, so a caller on an idle server waits for no timer and no
other caller; under load the batches in flight are busy, and the keys that arrive
meanwhile gather into the next one. A batch takes the keys waiting when it starts (at
most ``max_batch``), each key once however many callers wait for it, and hands each
caller the value of its own key. An exception of a fetch goes to every caller of its
batch. A caller that gives up (is cancelled) leaves the others theirs.

A coalescer belongs to one event loop: its callers' futures are that loop's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: A fetch: one value per key, in the order of the keys.
Fetch = Callable[[Sequence[K]], Awaitable[Sequence[V]]]


class Coalescer(Generic[K, V]):
    def __init__(
        self,
        fetch: Fetch[K, V],
        *,
        loop: asyncio.AbstractEventLoop,
        max_in_flight: int = 2,
        max_batch: int = 256,
    ) -> None:
        if max_in_flight < 1 or max_batch < 1:
            raise ValueError("max_in_flight and max_batch must be at least 1")
        self.loop = loop
        self._fetch = fetch
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        #: key -> the futures of its callers, in the order keys arrived.
        self._waiting: dict[K, list[asyncio.Future[V]]] = {}
        #: Batches running, counting one that is scheduled and has not taken its keys yet.
        self._in_flight = 0
        #: The batch scheduled that has not taken its keys yet.
        self._scheduled: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # a running task needs a reference

    async def get(self, key: K) -> V:
        """The value of ``key``, fetched together with the keys of callers waiting now."""
        future: asyncio.Future[V] = self.loop.create_future()
        self._waiting.setdefault(key, []).append(future)
        self._start_if_free()
        return await future

    def _start_if_free(self) -> None:
        # A batch scheduled but not started yet will take the keys that arrive before it
        # starts; a second one would start with nothing.
        if self._waiting and self._scheduled is None and self._in_flight < self._max_in_flight:
            self._in_flight += 1
            task = self._scheduled = self.loop.create_task(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task is self._scheduled:
            # Cancelled before it started (its loop is shutting down): its callers with it.
            self._scheduled = None
            self._in_flight -= 1
            for futures in self._waiting.values():
                for future in futures:
                    future.cancel()
            self._waiting.clear()

    async def _run(self) -> None:
        self._scheduled = None
        keys = list(self._waiting)[: self._max_batch]
        batch = {key: self._waiting.pop(key) for key in keys}
        try:
            self._start_if_free()  # more keys than one batch takes
            try:
                values = await self._fetch(keys)
                if len(values) != len(keys):
                    raise RuntimeError(f"a fetch of {len(keys)} keys gave {len(values)} values")
            except BaseException as exc:
                for futures in batch.values():
                    for future in futures:
                        if future.done():
                            continue
                        if isinstance(exc, asyncio.CancelledError):
                            future.cancel()
                        else:
                            future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            for key, value in zip(keys, values, strict=True):
                for future in batch[key]:
                    if not future.done():  # a caller that gave up has a cancelled one
                        future.set_result(value)
        finally:
            self._in_flight -= 1
            self._start_if_free()

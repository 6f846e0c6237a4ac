"""One scrape: this process's metrics (or every process's, in multiprocess mode) and the
gauges read from the database at that moment.

The queue's depth and age are the database's facts, not a process's: each process
counting its own would disagree with the others and with itself after a restart, so the
scrape asks the task table (one grouped read on the state index) instead. So with the
upstreams' circuit breakers, which the cluster shares.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from bananastand.metrics import PREFIX, Metrics
from bananastand.metrics.http import HttpRequests, HttpSnapshot
from bananastand.records import Breaker, BreakerState
from bananastand.store.ports import BreakerStore, QueueDepth, TaskStore

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: How many workers are alive now (the worker registry's count), read at each scrape.
LiveWorkers = Callable[[], Awaitable[int]]


class ScrapeStore(TaskStore, BreakerStore, Protocol):
    """What a scrape reads: the queue and the breakers."""


class Scrape:
    """Renders the text a Prometheus scrape of this process gets."""

    def __init__(
        self,
        metrics: Metrics,
        store: ScrapeStore,
        *,
        multiprocess_dir: Path | None = None,
        live_workers: LiveWorkers | None = None,
        upstreams: Sequence[str] = (),
    ) -> None:
        """``upstreams``: the names whose breakers are shown."""
        self._metrics = metrics
        self._store = store
        self._live_workers = live_workers
        self._upstreams = tuple(upstreams)
        self._registry = metrics.registry
        if multiprocess_dir is not None:
            # Sums the files every process of this server writes, this one's included.
            self._registry = CollectorRegistry()
            MultiProcessCollector(self._registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]

    async def render(self) -> bytes:
        depth = await self._store.queue_depth()
        live = await self._live_workers() if self._live_workers is not None else None
        now_ms = self._store.now_ms()
        snapshot = CollectorRegistry()
        snapshot.register(_Snapshot(depth, now_ms, live))
        rows = await self._store.breakers() if self._upstreams else []
        known = {breaker.name: breaker for breaker in rows}
        snapshot.register(
            _Breakers([known.get(name) or Breaker.closed(name) for name in self._upstreams])
        )
        snapshot.register(_HttpFamilies(self._metrics.http, self._metrics.http.snapshot()))
        # Reading the multiprocess files is disk work: off the event loop.
        counted = await asyncio.to_thread(generate_latest, self._registry)
        return counted + generate_latest(snapshot)


class _HttpFamilies:
    """The HTTP request metrics as of the scrape (tallied apart: ``metrics.http``)."""

    def __init__(self, http: HttpRequests, snapshot: HttpSnapshot) -> None:
        self._http = http
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return self._http.families(self._snapshot)


class _Snapshot:
    """The scrape-time gauges, as a prometheus-client collector."""

    def __init__(self, depth: QueueDepth, now_ms: int, live_workers: int | None) -> None:
        self._depth = depth
        self._now_ms = now_ms
        self._live_workers = live_workers

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            f"{PREFIX}_queue_tasks", "Tasks not final yet, by state.", labels=["state"]
        )
        for state, count in self._depth.by_state.items():
            queue.add_metric([state], count)
        yield queue
        oldest = self._depth.oldest_waiting_ms
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_oldest_waiting_age_seconds",
            "Age of the oldest waiting task (0 when none waits).",
            value=0.0 if oldest is None else max(0, self._now_ms - oldest) / 1000,
        )
        if self._live_workers is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_workers_live",
                "Worker processes alive now (by the worker registry).",
                value=self._live_workers,
            )


class _Breakers:
    """Each upstream's breaker: 1 for the state it is in, 0 for the others."""

    def __init__(self, breakers: list[Breaker]) -> None:
        self._breakers = breakers

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            f"{PREFIX}_upstream_breaker_state",
            "Each upstream's circuit breaker (shared by the cluster): 1 for its state.",
            labels=["provider", "state"],
        )
        for breaker in self._breakers:
            for state in BreakerState:
                family.add_metric([breaker.name, state.value], int(breaker.state is state))
        yield family


def token_accepted(token: str, authorization: str | None) -> bool:
    """Whether ``authorization`` carries the metrics token (always, when none is set)."""
    if not token:
        return True
    scheme, _, given = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )

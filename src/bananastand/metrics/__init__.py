"""What one process counts for Prometheus: every metric of ``docs/metrics.md`` but the
ones read from the database at scrape time (``metrics/exposition.py``).

One ``Metrics`` per runtime, in a registry of its own rather than prometheus-client's
global one: several servers in one process (the tests) then count apart, and nothing is
counted by merely importing a module. Under ``serve --worker-processes N`` the values go
to the shared multiprocess folder instead (``enable_multiprocess``), and the API's scrape
sums every process's files.

Labels are bounded sets (model, state, failCode, provider, HTTP status, route template),
never a task id or a key: each label value is a time series kept forever.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
    values,
)

from bananastand.metrics.http import HttpRequests

PREFIX = "bananastand"

#: Seconds, for what takes from milliseconds to minutes (a 4K render, a slow receiver).
_SLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)

#: The environment variable prometheus-client reads to find the multiprocess folder.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """The counters, gauges and histograms this process updates."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # A ``_created`` series beside every counter and histogram doubles what is stored
        # for a timestamp that ``rate()`` never needs (and multiprocess mode drops anyway).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tasks_created = Counter(
            f"{PREFIX}_tasks_created", "Tasks accepted by createTask.", ["model"], registry=r
        )
        self.tasks_finished = Counter(
            f"{PREFIX}_tasks_finished",
            "Tasks that reached a final state.",
            ["model", "state", "fail_code"],
            registry=r,
        )
        self.worker_claims = Counter(
            f"{PREFIX}_worker_claims",
            "Claim transactions of the workers, by whether they took a task.",
            ["found"],
            registry=r,
        )
        self.claim_to_start = Histogram(
            f"{PREFIX}_task_claim_to_start_seconds",
            "From a worker's claim to the start of the upstream call (inputs, upstream slot).",
            buckets=_SLOW_BUCKETS,
            registry=r,
        )
        self.tasks_in_flight = Gauge(
            f"{PREFIX}_tasks_in_flight",
            "Tasks the workers hold now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.upstream_duration = Histogram(
            f"{PREFIX}_upstream_request_duration_seconds",
            "One call to an upstream provider, whatever its outcome.",
            ["provider"],
            buckets=_SLOW_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            f"{PREFIX}_upstream_errors",
            "Upstream calls that failed, by HTTP status (or timeout, connection).",
            ["provider", "status"],
            registry=r,
        )
        self.upstream_failovers = Counter(
            f"{PREFIX}_upstream_failovers",
            "Tasks an upstream handed to the next one of their route, by why (its HTTP "
            "status, timeout, connection, breaker_open).",
            ["provider", "reason"],
            registry=r,
        )
        self.upstream_abandoned_calls = Counter(
            f"{PREFIX}_upstream_abandoned_calls",
            "Upstream calls given up on while the upstream may still run (and bill) them: "
            "timed out, or canceled with the task.",
            ["provider"],
            registry=r,
        )
        self.callback_deliveries = Counter(
            f"{PREFIX}_callback_deliveries",
            "Callback delivery attempts, by outcome (delivered, retrying, failed, refused).",
            ["outcome"],
            registry=r,
        )
        self.callback_duration = Histogram(
            f"{PREFIX}_callback_delivery_duration_seconds",
            "One callback delivery attempt, from connecting to the receiver's answer.",
            buckets=_SLOW_BUCKETS,
            registry=r,
        )
        # Tallied apart, without prometheus-client's locks: see ``metrics.http``.
        self.http = HttpRequests(PREFIX)

    def upstream_call(self, provider: str, seconds: float, status: str) -> None:
        """One upstream call ended: ``status`` "200", another HTTP status, "timeout" or
        "connection" (the providers' ``UpstreamCalls``)."""
        self.upstream_duration.labels(provider).observe(seconds)
        if status != "200":
            self.upstream_errors.labels(provider, status).inc()


def enable_multiprocess(directory: Path) -> None:
    """Make the metrics built after this (here and in the children, which inherit the
    environment) write to ``directory``, which an API's scrape sums.

    prometheus-client picks its value class when it is first imported, from the
    environment; the entry point calls this before any ``Metrics`` exists and sets the
    class itself, so that the choice does not hang on import order.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def shared_between_processes() -> Iterator[Path]:
    """``serve --worker-processes N``: a fresh multiprocess folder for this server's life.

    Fresh at each start, so that a restarted server never adds the files of processes
    long gone (their counters would come back from the dead); removed at exit.
    """
    directory = Path(tempfile.mkdtemp(prefix="bananastand-metrics-"))
    try:
        enable_multiprocess(directory)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def forget_process(pid: int) -> None:
    """A child exited: its in-flight gauge no longer counts (its counters stay summed)."""
    directory = multiprocess_directory()
    if directory is not None:
        multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def multiprocess_directory() -> Path | None:
    """The folder of ``enable_multiprocess``, in this process or its parent."""
    found = os.environ.get(MULTIPROC_ENV)
    return Path(found) if found else None

"""HTTP request metrics, tallied in plain dicts and rendered at scrape time.

prometheus-client's ``Counter.inc`` and ``Histogram.observe`` take a lock per update; on
the API's hottest routes (a recordInfo costs about 130 us of CPU in all) counting every
answer with them measured 6-7 us (docs/benchmarks.md). Only the API's event loop serves
HTTP, so these counts need neither locks nor multiprocess files: the middleware adds to
two dicts, and a scrape copies them on that loop (``snapshot``) and renders the copy as
the same families a Counter and a Histogram would give.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

#: Seconds, for one HTTP request of ours (a recordInfo takes about 100 us).
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

#: (route template, method, HTTP status, envelope code or "")
AnswerKey = tuple[str, str, int, str]


@dataclass(frozen=True, slots=True)
class HttpSnapshot:
    answers: dict[AnswerKey, int]
    #: (route, method) -> observations per bucket (the last one: above every bound), sum.
    durations: dict[tuple[str, str], tuple[list[int], float]]


class HttpRequests:
    """The API's answers by route, method, status and envelope code, and their durations."""

    def __init__(self, prefix: str, buckets: tuple[float, ...] = HTTP_BUCKETS) -> None:
        self._prefix = prefix
        self._buckets = buckets
        self._answers: dict[AnswerKey, int] = {}
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._sums: dict[tuple[str, str], float] = {}

    def record(self, route: str, method: str, status: int, code: str, seconds: float) -> None:
        key = (route, method, status, code)
        self._answers[key] = self._answers.get(key, 0) + 1
        where = (route, method)
        counts = self._counts.get(where)
        if counts is None:
            counts = self._counts[where] = [0] * (len(self._buckets) + 1)
            self._sums[where] = 0.0
        counts[bisect_left(self._buckets, seconds)] += 1  # bucket i: at most bound i
        self._sums[where] += seconds

    def snapshot(self) -> HttpSnapshot:
        """A copy to render off the loop (call it on the loop that records)."""
        durations = {
            where: (list(counts), self._sums[where]) for where, counts in self._counts.items()
        }
        return HttpSnapshot(dict(self._answers), durations)

    def families(self, snapshot: HttpSnapshot) -> Iterator[Metric]:
        answers = CounterMetricFamily(
            f"{self._prefix}_http_requests",
            "HTTP requests answered, by route template, status and envelope code.",
            labels=["route", "method", "status", "code"],
        )
        for (route, method, status, code), count in snapshot.answers.items():
            answers.add_metric([route, method, str(status), code], count)
        yield answers
        durations = HistogramMetricFamily(
            f"{self._prefix}_http_request_duration_seconds",
            "From a request's arrival to the end of its answer.",
            labels=["route", "method"],
        )
        bounds = [*(_le(bound) for bound in self._buckets), "+Inf"]
        for (route, method), (counts, total) in snapshot.durations.items():
            cumulative, running = [], 0
            for bound, count in zip(bounds, counts, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            durations.add_metric([route, method], cumulative, sum_value=total)
        yield durations


def _le(bound: float) -> str:
    """A bucket's bound as prometheus-client writes it (``0.5``, ``1.0``, ``10.0``)."""
    return repr(float(bound))

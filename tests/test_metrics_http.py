"""Unit: the HTTP request tallies render as a Prometheus counter and histogram would."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from bananastand.metrics.http import HttpRequests


class Families:
    def __init__(self, http: HttpRequests) -> None:
        self._http = http
        self._snapshot = http.snapshot()

    def collect(self) -> Iterator[Metric]:
        return self._http.families(self._snapshot)


def samples(http: HttpRequests) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(Families(http))
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_answers_and_durations_are_counted_as_prometheus_would() -> None:
    http = HttpRequests("bananastand", buckets=(0.001, 0.01))
    http.record("/api/v1/jobs/recordInfo", "GET", 200, "200", 0.0005)
    http.record("/api/v1/jobs/recordInfo", "GET", 200, "200", 0.001)  # on a bound: counted in it
    http.record("/api/v1/jobs/recordInfo", "GET", 200, "404", 0.5)
    seen = samples(http)
    route = ("method", "GET"), ("route", "/api/v1/jobs/recordInfo")
    answered = "bananastand_http_requests_total"
    assert seen[(answered, tuple(sorted((*route, ("status", "200"), ("code", "200")))))] == 2
    assert seen[(answered, tuple(sorted((*route, ("status", "200"), ("code", "404")))))] == 1
    bucket = "bananastand_http_request_duration_seconds_bucket"
    bounds = ("0.001", "0.01", "+Inf")
    cumulative = [seen[(bucket, tuple(sorted((*route, ("le", le)))))] for le in bounds]
    assert cumulative == [2, 2, 3]
    assert seen[("bananastand_http_request_duration_seconds_count", route)] == 3
    assert seen[("bananastand_http_request_duration_seconds_sum", route)] == 0.5015


def test_a_snapshot_does_not_move_with_later_answers() -> None:
    http = HttpRequests("bananastand")
    http.record("/healthz", "GET", 200, "", 0.0001)
    families = Families(http)
    http.record("/healthz", "GET", 200, "", 0.0001)
    registry = CollectorRegistry()
    registry.register(families)
    [answers] = [
        family
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        if family.name == "bananastand_http_requests"
    ]
    assert [sample.value for sample in answers.samples] == [1]

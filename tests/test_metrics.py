"""Acceptance: ``/metrics`` over real HTTP from a real server on a real database: scraped
before and after a known set of tasks, its counters move by exactly what those tasks did.

Each server counts into a registry of its own, so another test's server in this process
never moves these counters. Values are written just after the database write they count
(a task's end, a callback attempt): a scrape waits for the last of them with a deadline,
then every figure must be exact.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Server, prompt_body, running_server, start_postgres
from receiver import Answer, Receiver
from test_webhooks import FAST, create_with_callback, delivered, wait_info
from waiting import wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

MODEL = "nano-banana-pro"
DOCS = Path(__file__).parents[1] / "docs" / "metrics.md"
CREATE = "/api/v1/jobs/createTask"


def scrape(base_url: str, token: str = "") -> Samples:
    """Every sample of one scrape, by name and labels."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{base_url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape_until(
    base_url: str, done: Callable[[Samples], bool], token: str = "", timeout: float = 60.0
) -> Samples:
    return wait_for(
        lambda: scrape(base_url, token), done, what="the metrics got there", timeout=timeout
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    # The first attempt is refused, the retry delivered: one of each outcome.
    made = Receiver(script=[Answer(status=500)])
    yield made
    made.close()


def test_counters_move_by_exactly_the_tasks_run(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    server = start_server(**FAST)
    key = server.key()
    before = scrape(server.base_url)

    ids = [server.create(key, prompt_body(f"banana {n}"))["data"]["taskId"] for n in range(2)]
    ids.append(server.create(key, prompt_body("[sandbox:fail=upstream]"))["data"]["taskId"])
    with_callback = create_with_callback(server, key, receiver.url)
    states = [server.wait(key, task_id)["state"] for task_id in [*ids, with_callback]]
    assert states == ["success", "success", "fail", "success"]
    wait_info(server, key, with_callback, delivered)

    def moved(samples: Samples, name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    after = scrape_until(
        server.base_url,
        lambda now: (
            moved(now, "bananastand_callback_deliveries_total", outcome="delivered") >= 1
            and moved(
                now, "bananastand_upstream_request_duration_seconds_count", provider="sandbox"
            )
            >= 4
        ),
    )
    assert moved(after, "bananastand_tasks_created_total", model=MODEL) == 4
    finished = "bananastand_tasks_finished_total"
    assert moved(after, finished, model=MODEL, state="success", fail_code="") == 3
    assert moved(after, finished, model=MODEL, state="fail", fail_code="500") == 1
    assert moved(after, "bananastand_task_claim_to_start_seconds_count") == 4
    upstream = "bananastand_upstream_request_duration_seconds_count"
    assert moved(after, upstream, provider="sandbox") == 4
    errors = "bananastand_upstream_errors_total"
    assert moved(after, errors, provider="sandbox", status="500") == 1
    deliveries = "bananastand_callback_deliveries_total"
    assert moved(after, deliveries, outcome="retrying") == 1
    assert moved(after, deliveries, outcome="delivered") == 1
    assert moved(after, "bananastand_callback_delivery_duration_seconds_count") == 2
    assert value(after, "bananastand_tasks_in_flight") == 0
    # The route's template and the envelope's code, for every createTask of the test.
    created = {"route": CREATE, "method": "POST", "status": "200", "code": "200"}
    assert moved(after, "bananastand_http_requests_total", **created) == 4
    duration = "bananastand_http_request_duration_seconds_count"
    assert moved(after, duration, route=CREATE, method="POST") == 4
    # Nothing is left in the queue, and nothing waits.
    for state in ("waiting", "queuing", "generating"):
        assert value(after, "bananastand_queue_tasks", state=state) == 0
    assert value(after, "bananastand_queue_oldest_waiting_age_seconds") == 0
    # No label names a task or a key: each would be a time series of its own, forever.
    labels = {label for _name, pairs in after for _label, label in pairs}
    assert not {label for label in labels if label.startswith(("task_", "bs_", "key_"))}


def test_docs_metrics_md_describes_every_metric_served(start_server: Callable[..., Server]) -> None:
    server = start_server()
    served = {
        family.name for family in text_string_to_metric_families(server.client.get("/metrics").text)
    }
    documented = set(re.findall(r"^\| `(bananastand_[a-z_]+)`", DOCS.read_text(), re.MULTILINE))
    # Counters are named without ``_total`` by the parser; the docs name them in full.
    assert {re.sub(r"_total$", "", name) for name in documented} - served == set()
    assert served - {re.sub(r"_total$", "", name) for name in documented} == set()


def test_the_queue_gauges_count_waiting_tasks_and_their_age(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(run_worker=False)
    key = server.key()
    for _ in range(3):
        assert server.create(key, prompt_body())["code"] == 200
    samples = scrape_until(
        server.base_url, lambda now: value(now, "bananastand_queue_oldest_waiting_age_seconds") > 0
    )
    assert value(samples, "bananastand_queue_tasks", state="waiting") == 3
    assert value(samples, "bananastand_queue_tasks", state="generating") == 0


def test_unmatched_paths_are_one_route_label_and_errors_carry_their_code(
    start_server: Callable[..., Server],
) -> None:
    server = start_server()
    before = scrape(server.base_url)
    for path in ("/nope", "/nope/again", "/also-not"):
        assert server.client.get(path).status_code == 404
    refused = server.client.post(CREATE, json=prompt_body(), headers={"Authorization": "x"})
    assert refused.json()["code"] == 401
    after = scrape(server.base_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "bananastand_http_requests_total"
    assert moved(requests, route="unmatched", method="GET", status="404", code="") == 3
    assert moved(requests, route=CREATE, method="POST", status="200", code="401") == 1


def test_the_metrics_token_guards_the_scrape(start_server: Callable[..., Server]) -> None:
    server = start_server(metrics_token="a metrics secret")
    assert server.client.get("/metrics").status_code == 401
    wrong = {"Authorization": "Bearer another secret"}
    assert server.client.get("/metrics", headers=wrong).status_code == 401
    assert "bananastand_queue_tasks" in str(scrape(server.base_url, token="a metrics secret"))


def test_readiness_names_storage_that_cannot_be_written_and_recovers(
    start_server: Callable[..., Server],
) -> None:
    server = start_server()
    ready = server.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.headers["content-type"] == "text/plain; charset=utf-8"
    files = server.data_dir / "files"
    moved_away = server.data_dir / "files-away"
    files.rename(moved_away)
    files.write_text("a file where the storage folder should be")
    try:
        answer = server.client.get("/readyz")
        assert answer.status_code == 503
        assert answer.text == "not ready: storage down\n"
        assert server.client.get("/healthz").status_code == 200  # alive all the same
    finally:
        files.unlink()
        moved_away.rename(files)
    assert server.client.get("/readyz").text == "ready\n"


def test_readiness_needs_redis_when_one_is_configured(
    start_server: Callable[..., Server], redis_url: str
) -> None:
    server = start_server(redis_url=redis_url)
    assert server.client.get("/readyz").status_code == 200
    cut = start_server(redis_url="redis://127.0.0.1:1")  # nothing listens on port 1
    answer = cut.client.get("/readyz")
    assert answer.status_code == 503
    assert "redis" in answer.text
    assert "database" not in answer.text


@pytest.mark.postgresql_only(reason="stops a database server; an SQLite file cannot be stopped")
def test_readiness_flips_to_503_while_the_database_is_stopped(tmp_path: Path) -> None:
    # A database server of its own (the run's shared one serves other tests meanwhile),
    # outliving the app server, which stops before it.
    with contextlib.ExitStack() as stack:
        database = start_postgres(stack)
        server = stack.enter_context(
            running_server(tmp_path / "data", database_url=database.new_database())
        )
        assert server.client.get("/readyz").status_code == 200
        database.stop()
        try:
            answer = server.client.get("/readyz")
            assert answer.status_code == 503
            assert answer.text == "not ready: database down\n"
            assert server.client.get("/healthz").status_code == 200
        finally:
            database.start()
        wait_for(  # the pool reconnects
            lambda: server.client.get("/readyz").status_code == 200,
            what="ready again after the database returned",
            interval=0.1,
        )

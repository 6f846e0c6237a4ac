"""Acceptance: metrics across processes, as real ``bananastand`` processes: under
``serve --worker-processes 2`` the API's ``/metrics`` sums what its two worker children
counted (the tasks end there, not in the API), and a killed child's tasks are no longer
in flight; ``bananastand worker --metrics-port`` serves a worker's own, behind the metrics
token."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from conftest import free_port, make_key
from processes import Spawn, create, generating, wait_row
from test_metrics import scrape, scrape_until, value
from test_worker_processes import SUPERVISED, pid_of, wait_working

FINISHED = "bananastand_tasks_finished_total"
MODEL = "nano-banana-pro"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"  # the folder the ``spawn`` fixture gives every child


def final(row: dict[str, object]) -> bool:
    return row["state"] in ("success", "fail")


def test_the_apis_scrape_sums_its_worker_processes(spawn: Spawn, data_dir: Path) -> None:
    serve = spawn(*SUPERVISED)
    wait_working(serve, 2)
    key = make_key(data_dir)
    prompts = [f"banana {n}" for n in range(3)] + ["[sandbox:fail=upstream]"]
    for task_id in [create(serve, key, prompt) for prompt in prompts]:
        wait_row(data_dir, task_id, final, timeout=120)

    def ended(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
        return value(samples, FINISHED, model=MODEL, state="success", fail_code="") + value(
            samples, FINISHED, model=MODEL, state="fail", fail_code="500"
        )

    samples = scrape_until(serve.base_url, lambda now: ended(now) >= 4)
    assert value(samples, "bananastand_tasks_created_total", model=MODEL) == 4
    assert value(samples, FINISHED, model=MODEL, state="success", fail_code="") == 3
    assert value(samples, FINISHED, model=MODEL, state="fail", fail_code="500") == 1
    upstream = "bananastand_upstream_request_duration_seconds_count"
    assert value(samples, upstream, provider="sandbox") == 4
    errors = "bananastand_upstream_errors_total"
    assert value(samples, errors, provider="sandbox", status="500") == 1
    # Summed over the live children: one series, no pid label.
    assert value(samples, "bananastand_tasks_in_flight") == 0
    assert value(samples, "bananastand_queue_tasks", state="waiting") == 0
    assert value(samples, "bananastand_workers_live") == 2  # the children, by the registry


def test_a_killed_childs_tasks_are_no_longer_in_flight(spawn: Spawn, data_dir: Path) -> None:
    serve = spawn(*SUPERVISED)
    wait_working(serve, 2)
    key = make_key(data_dir)
    task_id = create(serve, key, "[sandbox:delay=600000] a long one")
    holder = pid_of(wait_row(data_dir, task_id, generating(1), timeout=120)["worker_id"])
    in_flight = "bananastand_tasks_in_flight"
    scrape_until(serve.base_url, lambda now: value(now, in_flight) == 1)
    os.kill(holder, signal.SIGKILL)
    # Its lease (60 s) outlives the test: no other worker takes the task meanwhile.
    scrape_until(serve.base_url, lambda now: value(now, in_flight) == 0)


def test_a_worker_serves_its_own_metrics_behind_the_token(spawn: Spawn, data_dir: Path) -> None:
    token = "the metrics token"
    api = spawn("serve", "--no-worker")
    port = free_port()
    spawn("worker", "--metrics-port", str(port), env={"BANANASTAND_METRICS_TOKEN": token})
    worker = f"http://127.0.0.1:{port}"
    key = make_key(data_dir)
    # The worker served its metrics before it claimed anything: once the task is done,
    # its endpoint answers.
    wait_row(data_dir, create(api, key, "a banana"), final, timeout=120)

    samples = scrape_until(
        worker,
        lambda now: value(now, FINISHED, model=MODEL, state="success", fail_code="") >= 1,
        token=token,
    )
    assert value(samples, FINISHED, model=MODEL, state="success", fail_code="") == 1
    # The task was created by the API, not by this worker.
    assert value(samples, "bananastand_tasks_created_total", model=MODEL) == 0
    assert httpx.get(f"{worker}/metrics", timeout=10).status_code == 401
    assert httpx.get(f"{worker}/other", timeout=10).status_code == 404
    # The API's own scrape has the creation and no task ended in it.
    from_api = scrape(api.base_url)
    assert value(from_api, "bananastand_tasks_created_total", model=MODEL) == 1
    assert value(from_api, FINISHED, model=MODEL, state="success", fail_code="") == 0

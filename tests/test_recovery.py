"""Acceptance: crash and shutdown recovery with real processes on a real SQLite file.

Every child of a test shares ``tmp_path/"data"``; the tests kill (SIGKILL) or stop
(SIGTERM) ``bananastand serve`` / ``bananastand worker`` while a task is generating and
check, in the database file itself, that the task ends exactly once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from conftest import make_key
from processes import (
    Spawn,
    create,
    db_row,
    generating,
    record,
    result_files,
    wait_record,
    wait_row,
)

LEASE = {"BANANASTAND_LEASE_SECONDS": "1"}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"  # the folder the ``spawn`` fixture gives every child


def test_kill_9_mid_task_runs_it_again_exactly_once(spawn: Spawn, data_dir: Path) -> None:
    first = spawn("serve", env=LEASE)
    key = make_key(data_dir)
    task_id = create(first, key, "[sandbox:delay=4000] a banana")
    wait_record(first, key, task_id, {"generating"})
    assert db_row(data_dir, task_id)["attempts"] == 1
    first.kill()
    assert result_files(data_dir, task_id) == []  # died during generation

    second = spawn("serve", env=LEASE)
    # The dead worker's lease runs out: the task is rescued and claimed again.
    wait_row(data_dir, task_id, lambda row: row["attempts"] == 2)
    done = wait_record(second, key, task_id, {"success", "fail"}, timeout=30)
    assert done["state"] == "success", done
    complete_time = done["completeTime"]
    assert complete_time is not None

    # Exactly once: the outcome never changes afterwards.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        again = record(second, key, task_id)
        assert again["state"] == "success"
        assert again["completeTime"] == complete_time
        assert again["resultJson"] == done["resultJson"]
        time.sleep(0.1)

    row = db_row(data_dir, task_id)
    assert row["attempts"] == 2
    assert row["state"] == "success"
    assert row["completed_at"] == complete_time
    assert row["lease_token"] is None
    assert row["lease_expires_at"] is None
    assert f":{second.process.pid}:" in row["worker_id"]  # the restarted server ran it

    files = result_files(data_dir, task_id)
    assert len(files) == 1, files
    [url] = json.loads(done["resultJson"])["resultUrls"]
    assert url.endswith(f"/results/{task_id}/{files[0].name}")  # a signed link to it
    image = httpx.get(url, timeout=10)
    assert image.status_code == 200
    assert image.content == files[0].read_bytes()


def test_kill_9_twice_fails_the_task_after_max_attempts(spawn: Spawn, data_dir: Path) -> None:
    env = {**LEASE, "BANANASTAND_MAX_ATTEMPTS": "2"}
    first = spawn("serve", env=env)
    key = make_key(data_dir)
    task_id = create(first, key, "[sandbox:delay=20000] a banana")
    wait_row(data_dir, task_id, generating(1))
    first.kill()

    second = spawn("serve", env=env)
    wait_row(data_dir, task_id, generating(2))  # rescued and claimed again
    second.kill()

    third = spawn("serve", env=env)
    done = wait_record(third, key, task_id, {"success", "fail"})
    assert done["state"] == "fail"
    assert done["failCode"] == "500"
    assert "worker" in done["failMsg"]
    assert "stopped 2 times" in done["failMsg"]
    assert "giving up" in done["failMsg"]
    assert done["resultJson"] == ""
    # Final: no third attempt ever starts.
    time.sleep(1.2)
    row = db_row(data_dir, task_id)
    assert row["state"] == "fail"
    assert row["attempts"] == 2
    assert row["lease_token"] is None
    assert row["completed_at"] == done["completeTime"]
    assert result_files(data_dir, task_id) == []


def test_sigterm_lets_a_running_task_finish(spawn: Spawn, data_dir: Path) -> None:
    child = spawn("serve", env={"BANANASTAND_SHUTDOWN_GRACE_SECONDS": "10"})
    key = make_key(data_dir)
    task_id = create(child, key, "[sandbox:delay=1500] a banana")
    wait_row(data_dir, task_id, generating(1))
    started = time.monotonic()
    code = child.terminate(timeout=30)
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"took {elapsed:.1f}s to stop"

    row = db_row(data_dir, task_id)
    assert row["state"] == "success", row
    assert row["attempts"] == 1
    assert row["lease_token"] is None
    assert row["completed_at"] is not None
    assert len(result_files(data_dir, task_id)) == 1
    # A clean, drained shutdown is a successful exit.
    assert code == 0, f"serve exited {code} after SIGTERM\n{child.log()[-2000:]}"


def test_sigterm_past_the_grace_period_hands_the_task_back(spawn: Spawn, data_dir: Path) -> None:
    child = spawn("serve", env={"BANANASTAND_SHUTDOWN_GRACE_SECONDS": "1"})
    key = make_key(data_dir)
    task_id = create(child, key, "[sandbox:delay=20000] a banana")
    wait_row(data_dir, task_id, generating(1))
    started = time.monotonic()
    child.terminate(timeout=30)
    elapsed = time.monotonic() - started
    assert elapsed < 6, f"took {elapsed:.1f}s to stop with a 1 s grace period"

    row = db_row(data_dir, task_id)
    assert row["state"] == "waiting", row
    assert row["attempts"] == 0  # released: not counted as an attempt
    assert row["lease_token"] is None
    assert row["lease_expires_at"] is None
    assert row["worker_id"] is None
    assert row["completed_at"] is None
    assert result_files(data_dir, task_id) == []

    # The next server picks it up again, as a first attempt.
    again = spawn("serve", env=LEASE)
    wait_row(data_dir, task_id, generating(1))
    assert record(again, key, task_id)["state"] == "generating"
    again.kill()


def test_split_roles_serve_without_worker_and_a_worker_process(
    spawn: Spawn, data_dir: Path
) -> None:
    api = spawn("serve", "--no-worker")
    key = make_key(data_dir)
    task_id = create(api, key, "a banana")
    # Nobody runs tasks in the API process.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert record(api, key, task_id)["state"] == "waiting"
        time.sleep(0.1)
    assert db_row(data_dir, task_id)["attempts"] == 0

    worker = spawn("worker")
    done = wait_record(api, key, task_id, {"success", "fail"})
    assert done["state"] == "success", done
    row = db_row(data_dir, task_id)
    assert row["attempts"] == 1
    assert f":{worker.process.pid}:" in row["worker_id"]
    assert len(result_files(data_dir, task_id)) == 1
    # Tasks made later are picked up too (the API's wake-up reaches the worker process).
    second = create(api, key, "another banana")
    assert wait_record(api, key, second, {"success", "fail"})["state"] == "success"
    assert worker.terminate(timeout=30) == 0


def test_worker_process_drains_on_sigterm(spawn: Spawn, data_dir: Path) -> None:
    api = spawn("serve", "--no-worker")
    key = make_key(data_dir)
    worker = spawn("worker", env={"BANANASTAND_SHUTDOWN_GRACE_SECONDS": "10"})
    task_id = create(api, key, "[sandbox:delay=1500] a banana")
    wait_row(data_dir, task_id, generating(1))
    started = time.monotonic()
    code = worker.terminate(timeout=30)
    assert time.monotonic() - started < 10
    assert code == 0, worker.log()[-2000:]
    row = db_row(data_dir, task_id)
    assert row["state"] == "success", row
    assert row["attempts"] == 1
    assert record(api, key, task_id)["state"] == "success"
    assert len(result_files(data_dir, task_id)) == 1

"""Acceptance: ``bananastand serve --worker-processes 2`` as a real process: its tasks run
in the two ``bananastand worker`` children it supervises (the rows name a child's pid,
never the API's), a child killed with -9 is started again and tasks still complete,
SIGTERM drains the children and exits 0 with nothing lost, and a supervisor killed with
-9 takes its children with it. The children's pids come from the supervisor's own log
lines and the kernel's list of its children."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from bananastand.store.tables import workers
from conftest import ServerProcess, make_key, rows_of
from processes import Spawn, create, db_row, generating, wait_row
from test_metrics import scrape, value
from waiting import wait_for

T = TypeVar("T")

SUPERVISED = ("serve", "--worker-processes", "2")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"  # the folder the ``spawn`` fixture gives every child


def log_lines(serve: ServerProcess, logger: str, message: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``logger`` saying ``message``, oldest first (the children
    write to the supervisor's output)."""
    lines = [json.loads(line) for line in serve.log().splitlines() if line.startswith("{")]
    return [line for line in lines if (line["logger"], line["msg"]) == (logger, message)]


def supervisor_lines(serve: ServerProcess, message: str) -> list[dict[str, Any]]:
    return log_lines(serve, "bananastand.supervisor", message)


def working_pids(serve: ServerProcess) -> list[int]:
    """The children the supervisor started whose worker is running (claiming tasks), in
    the order they were started."""
    started = [line["pid"] for line in supervisor_lines(serve, "worker process started")]
    working = log_lines(serve, "bananastand.worker", "worker started")
    workers = {pid_of(line["worker_id"]) for line in working}
    return [pid for pid in started if pid in workers]


def pid_of(worker_id: str) -> int:
    """Worker ids are ``host:pid:token``."""
    return int(worker_id.split(":")[-2])


def children_of(pid: int) -> set[int]:
    """What the kernel lists as the process's children (its main thread's)."""
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (an exited one not yet reaped is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_working(serve: ServerProcess, count: int) -> list[int]:
    """``working_pids`` once there are ``count``."""
    return wait_for(
        lambda: working_pids(serve),
        lambda pids: len(pids) >= count,
        what=f"{count} worker processes working",
        timeout=120,
    )


def ran_by(data_dir: Path, task_id: str) -> int:
    """The pid of the worker that ran the task."""
    return pid_of(db_row(data_dir, task_id)["worker_id"])


def succeeded(data_dir: Path, task_ids: list[str]) -> set[int]:
    """Waits for each task to succeed; the pids of the workers that ran them."""
    for task_id in task_ids:
        row = wait_row(data_dir, task_id, lambda row: row["state"] in ("success", "fail"), 120)
        assert row["state"] == "success", row
    return {ran_by(data_dir, task_id) for task_id in task_ids}


def test_the_children_run_the_tasks_and_one_killed_is_started_again(
    spawn: Spawn, data_dir: Path
) -> None:
    serve = spawn(*SUPERVISED)
    assert "tasks run: in 2 worker processes" in serve.log()  # the banner says so
    first = wait_working(serve, 2)
    assert children_of(serve.process.pid) == set(first)
    key = make_key(data_dir)

    runners = succeeded(data_dir, [create(serve, key, f"banana {n}") for n in range(4)])
    assert runners <= set(first)
    assert serve.process.pid not in runners

    victim, survivor = first
    os.kill(victim, signal.SIGKILL)
    replacement = wait_working(serve, 3)[2]
    [exited] = supervisor_lines(serve, "worker process exited")
    assert exited["pid"] == victim
    assert exited["signal"] == "SIGKILL"
    [restart] = supervisor_lines(serve, "restarting worker process")
    assert restart["pid"] == victim
    assert children_of(serve.process.pid) == {survivor, replacement}

    later = [create(serve, key, f"banana after {n}") for n in range(4)]
    assert succeeded(data_dir, later) <= {survivor, replacement}

    # Killed with -9 (it runs no code of its own), the supervisor takes its children along.
    serve.kill()
    wait_for(
        lambda: not running(survivor) and not running(replacement),
        what="no worker process left",
        timeout=120,
    )


def test_sigterm_drains_every_child_and_exits_0_with_nothing_lost(
    spawn: Spawn, data_dir: Path
) -> None:
    serve = spawn(*SUPERVISED, env={"BANANASTAND_SHUTDOWN_GRACE_SECONDS": "8"})
    pids = wait_working(serve, 2)
    key = make_key(data_dir)
    quick = create(serve, key, "[sandbox:delay=2000] done within the grace period")
    slow = create(serve, key, "[sandbox:delay=120000] handed back")
    wait_row(data_dir, quick, generating(1), 120)
    wait_row(data_dir, slow, generating(1), 120)

    assert serve.terminate(timeout=120) == 0, serve.log()[-3000:]
    assert not any(running(pid) for pid in pids)
    exits = supervisor_lines(serve, "worker process exited")
    assert {line["pid"]: line["exit_status"] for line in exits} == dict.fromkeys(pids, 0)
    assert supervisor_lines(serve, "restarting worker process") == []

    finished = db_row(data_dir, quick)
    assert finished["state"] == "success", finished
    assert ran_by(data_dir, quick) in pids
    handed_back = db_row(data_dir, slow)
    assert handed_back["state"] == "waiting", handed_back
    assert handed_back["attempts"] == 0  # released, not counted as an attempt
    assert handed_back["worker_id"] is None
    assert handed_back["lease_token"] is None


def heartbeats(data_dir: Path) -> list[int]:
    """The registry's last heartbeat of each worker (the store's clock, ms)."""
    with rows_of(data_dir) as connection:
        return list(connection.execute(select(workers.c.heartbeat_at)).scalars())


def test_a_task_made_in_the_api_is_claimed_by_one_of_four_workers_not_by_all(
    spawn: Spawn, data_dir: Path
) -> None:
    """The wake-up of a created task reaches all four workers, and one of them claims it:
    the turn falls to one live worker, the others only look a moment later whether it
    still waits (one read, no claim). Before, all four ran a claim transaction for every
    task and three found nothing. Claims are counted by ``bananastand_worker_claims_total``
    (summed over the children by the API's scrape)."""
    serve = spawn(
        "serve",
        "--worker-processes",
        "4",
        env={
            # No poll and no look after another's turn within the test (each would be a
            # look, maybe a claim, on a host too busy to claim at once); heartbeats often
            # enough that every worker soon lists all four, and far enough apart that a
            # busy host never makes one miss three in a row and drop out of the lists.
            "BANANASTAND_POLL_INTERVAL_SECONDS": "120",
            "BANANASTAND_WORKER_TURN_LOOK_SECONDS": "120",
            "BANANASTAND_WORKER_HEARTBEAT_SECONDS": "3",
        },
    )
    wait_working(serve, 4)
    four = wait_for(
        lambda: heartbeats(data_dir), lambda beats: len(beats) == 4, what="4 workers live"
    )
    # Every worker's view is its last heartbeat's: one after all four had joined.
    wait_for(
        lambda: heartbeats(data_dir),
        lambda beats: min(beats) > max(four),
        what="a heartbeat of each worker that saw all four",
    )
    key = make_key(data_dir)
    before = scrape(serve.base_url)
    for n in range(6):  # one at a time: each its own wake-up, and its own claim
        runners = succeeded(data_dir, [create(serve, key, f"banana {n}")])
        assert serve.process.pid not in runners
    after = scrape(serve.base_url)

    def claims(found: str) -> float:
        name = "bananastand_worker_claims_total"
        return value(after, name, found=found) - value(before, name, found=found)

    assert claims("true") == 6  # each task claimed once
    assert claims("false") == 0  # every worker claimed every task before: 18 found nothing

"""Acceptance: the live-worker registry and the cluster's periodic jobs, with real
``bananastand worker`` and ``serve`` processes on one database.

Each process heartbeats its row; ``bananastand workers`` and ``GET /admin/workers`` list
the live ones; a worker stopped with SIGTERM leaves at once, one killed with -9 drops out
once its heartbeats are too old. Of several workers, only the holder of the periodic-jobs
lease sweeps expired files, and when it dies another takes over.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from accounts_helpers import ADMIN_TOKEN
from bananastand.settings import Settings
from conftest import ServerProcess, cli, database_settings, rows_of
from waiting import wait_for

#: Small, so a killed worker drops out within seconds (not live after three of them);
#: not smaller, so a busy machine never makes a live worker miss three in a row.
HEARTBEAT = {"BANANASTAND_WORKER_HEARTBEAT_SECONDS": "1"}
SWEPT = '"retention sweep done"'


def listed_by_cli(data_dir: Path) -> dict[int, list[str]]:
    """``bananastand workers``: pid -> the line's fields."""
    done = cli(data_dir, "workers")
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert all(len(row) == 8 for row in rows), done.stdout
    return {int(row[2]): row for row in rows}


def listed_by_api(api: ServerProcess) -> dict[int, dict[str, Any]]:
    import httpx

    answer = httpx.get(
        f"{api.base_url}/admin/workers",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    ).json()
    assert answer["code"] == 200, answer
    return {worker["pid"]: worker for worker in answer["data"]}


def test_workers_are_listed_while_live_and_leave_when_stopped_or_killed(
    spawn: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    env = {**HEARTBEAT, "BANANASTAND_WORKER_CONCURRENCY": "3"}
    api = spawn("serve", env={**env, "BANANASTAND_ADMIN_TOKEN": ADMIN_TOKEN})
    workers = [spawn("worker", env=env) for _ in range(3)]
    pids = {child.process.pid for child in [api, *workers]}

    shown = wait_for(
        lambda: listed_by_api(api), lambda found: found.keys() == pids, what="all listed"
    )
    for child in workers:
        entry = shown[child.process.pid]
        assert (entry["role"], entry["concurrency"], entry["inFlight"]) == ("worker", 3, 0)
        assert entry["id"].split(":")[1] == str(child.process.pid)
        assert entry["heartbeatAt"] >= entry["startedAt"] > 0
    assert shown[api.process.pid]["role"] == "serve"
    lines = listed_by_cli(data_dir)
    assert lines.keys() == pids
    assert [lines[child.process.pid][3] for child in workers] == ["worker"] * 3
    assert lines[api.process.pid][0] == shown[api.process.pid]["id"]

    stopped, killed, kept = workers
    assert stopped.terminate() == 0
    # Gone at once: it removed its row on the way out, no heartbeat has to age.
    assert stopped.process.pid not in listed_by_api(api)
    assert stopped.process.pid not in listed_by_cli(data_dir)

    killed.kill()
    live = {api.process.pid, kept.process.pid}
    wait_for(lambda: listed_by_api(api).keys() == live, what="the killed worker drops out")
    assert listed_by_cli(data_dir).keys() == live
    for child in (kept, api):
        assert child.process.poll() is None, child.log()


def sweeps(child: ServerProcess) -> int:
    return child.log().count(SWEPT)


def lease_holder(data_dir: Path) -> str:
    with rows_of(data_dir) as rows:
        holder = rows.execute(text("SELECT holder FROM leases WHERE name = 'periodic-jobs'"))
        return str(holder.scalar_one_or_none() or "")


def old_result(data_dir: Path, name: str) -> Path:
    """A result file an hour old: past the one-minute retention the workers run with."""
    files = Settings(data_dir=data_dir, **database_settings(data_dir)).files_dir
    path = files / "results" / "task_old" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"old")
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    return path


def test_of_several_workers_only_the_lease_holder_sweeps_and_another_takes_over(
    spawn: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    env = {
        **HEARTBEAT,
        # Each worker would sweep every 0.2 s (its upkeep too), were it not for the lease.
        "BANANASTAND_SWEEP_INTERVAL_SECONDS": "0.2",
        "BANANASTAND_LEASE_SECONDS": "0.6",
        "BANANASTAND_RESULT_RETENTION_SECONDS": "60",
    }
    first_file = old_result(data_dir, "first.png")
    workers = [spawn("worker", env=env) for _ in range(3)]

    def holder_swept_often() -> ServerProcess | None:
        sweepers = [child for child in workers if sweeps(child) >= 5]
        return sweepers[0] if sweepers else None

    holder = wait_for(holder_swept_often, what="a worker sweeps again and again")
    others = [child for child in workers if child is not holder]
    for child in workers:  # every worker was up and asking for the lease meanwhile
        wait_for(lambda child=child: '"worker started"' in child.log(), what="the worker started")
    assert [sweeps(child) for child in others] == [0, 0]
    assert lease_holder(data_dir).split(":")[1] == str(holder.process.pid)
    assert not first_file.exists()

    # The holder dies without a word: a lease time later another worker sweeps.
    holder.kill()
    second_file = old_result(data_dir, "second.png")
    before = [sweeps(child) for child in others]
    successor = wait_for(
        lambda: next((c for c, n in zip(others, before, strict=True) if sweeps(c) > n), None),
        what="another worker takes over",
    )
    wait_for(lambda: sweeps(successor) >= 5, what="the successor sweeps again and again")
    [bystander] = [child for child in others if child is not successor]
    assert sweeps(bystander) == 0
    assert lease_holder(data_dir).split(":")[1] == str(successor.process.pid)
    wait_for(lambda: not second_file.exists(), what="the successor deletes the expired file")

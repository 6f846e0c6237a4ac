"""What the tests that drive ``bananastand`` child processes (``spawn``) share: tasks
made and read over HTTP, and their rows read straight from the database, which shows
what no API does (leases, attempts, the worker that ran a task)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import select

from bananastand.store.tables import tasks
from conftest import ServerProcess, prompt_body, rows_of

Spawn = Callable[..., ServerProcess]
T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, timeout: float = 90) -> T:
    """``condition``'s first truthy answer; the deadline is generous because starting a
    child costs seconds of CPU on a busy machine."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout:g} s: {what}")
        time.sleep(0.05)
    return found


def db_row(data_dir: Path, task_id: str) -> dict[str, Any]:
    """The task's row, read straight from the database (lease columns and attempts included)."""
    with rows_of(data_dir) as connection:
        row = connection.execute(select(tasks).where(tasks.c.id == task_id)).mappings().first()
    assert row is not None, f"no row for {task_id}"
    return dict(row)


def wait_row(
    data_dir: Path, task_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        row = db_row(data_dir, task_id)
        if done(row):
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} did not get there in {timeout}s: {row}")
        time.sleep(0.05)


def create(child: ServerProcess, key: str, prompt: str) -> str:
    response = httpx.post(
        f"{child.base_url}/api/v1/jobs/createTask",
        json=prompt_body(prompt),
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    answer = response.json()
    assert answer["code"] == 200, answer
    task_id: str = answer["data"]["taskId"]
    return task_id


def record(child: ServerProcess, key: str, task_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{child.base_url}/api/v1/jobs/recordInfo",
        params={"taskId": task_id},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    answer = response.json()
    assert answer["code"] == 200, answer
    data: dict[str, Any] = answer["data"]
    return data


def wait_record(
    child: ServerProcess,
    key: str,
    task_id: str,
    states: set[str],
    timeout: float = 20,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = record(child, key, task_id)
        if data["state"] in states:
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {data['state']} after {timeout}s")
        time.sleep(0.05)


def result_files(data_dir: Path, task_id: str) -> list[Path]:
    folder = data_dir / "files" / "results" / task_id
    return sorted(folder.iterdir()) if folder.exists() else []


def generating(attempts: int) -> Callable[[dict[str, Any]], bool]:
    return lambda row: row["state"] == "generating" and row["attempts"] == attempts

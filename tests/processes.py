"""What the tests that drive ``bananastand`` child processes (``spawn``) share: tasks
made and read over HTTP, and their rows read straight from the database, which shows
what no API does (leases, attempts, the worker that ran a task)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx
from sqlalchemy import select

from bananastand.store.tables import tasks
from conftest import ServerProcess, prompt_body, rows_of
from waiting import DEADLINE_S, wait_for

Spawn = Callable[..., ServerProcess]


def db_row(data_dir: Path, task_id: str) -> dict[str, Any]:
    """The task's row, read straight from the database (lease columns and attempts included)."""
    with rows_of(data_dir) as connection:
        row = connection.execute(select(tasks).where(tasks.c.id == task_id)).mappings().first()
    assert row is not None, f"no row for {task_id}"
    return dict(row)


def wait_row(
    data_dir: Path,
    task_id: str,
    done: Callable[[dict[str, Any]], bool],
    timeout: float = DEADLINE_S,
) -> dict[str, Any]:
    return wait_for(
        lambda: db_row(data_dir, task_id), done, what=f"the row of {task_id}", timeout=timeout
    )


class Serving(Protocol):
    """A server of the tests, in this process (``conftest.Server``) or a child."""

    base_url: str


def create(server: Serving, key: str, prompt: str) -> str:
    """A new task's id, made over plain HTTP."""
    response = httpx.post(
        f"{server.base_url}/api/v1/jobs/createTask",
        json=prompt_body(prompt),
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
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
    timeout: float = DEADLINE_S,
) -> dict[str, Any]:
    return wait_for(
        lambda: record(child, key, task_id),
        lambda data: data["state"] in states,
        what=f"task {task_id} in {sorted(states)}",
        timeout=timeout,
    )


def result_files(data_dir: Path, task_id: str) -> list[Path]:
    folder = data_dir / "files" / "results" / task_id
    return sorted(folder.iterdir()) if folder.exists() else []


def generating(attempts: int) -> Callable[[dict[str, Any]], bool]:
    return lambda row: row["state"] == "generating" and row["attempts"] == attempts

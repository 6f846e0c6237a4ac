"""Acceptance: logs are JSON lines, and every line about a task or a request names it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from conftest import ServerProcess, make_key, prompt_body
from waiting import wait_for


def _lines(child: ServerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in child.log().splitlines() if line.startswith("{")]


def test_task_and_request_ids_are_on_every_line_about_them(
    spawn: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    child = spawn("serve", env={"BANANASTAND_ACCESS_LOG": "true"})
    key = make_key(tmp_path / "data")  # the folder spawn gives the server
    headers = {"Authorization": f"Bearer {key}", "X-Request-ID": "req-from-the-test"}
    answer = httpx.post(
        f"{child.base_url}/api/v1/jobs/createTask", json=prompt_body(), headers=headers
    ).json()
    task_id = answer["data"]["taskId"]
    wait_for(
        lambda: any(line.get("msg") == "task succeeded" for line in _lines(child)),
        what=lambda: f"the task succeeded:\n{child.log()}",
        interval=0.1,
    )

    lines = _lines(child)
    about_task = [line for line in lines if line.get("task_id") == task_id]
    assert {"task claimed", "task succeeded"} <= {line["msg"] for line in about_task}
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert any(
        line.get("request_id") == "req-from-the-test" and "createTask" in line["msg"]
        for line in access
    ), access
    for line in lines:
        assert {"ts", "level", "logger", "msg"} <= set(line)
        assert "color_message" not in line

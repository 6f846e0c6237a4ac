"""Acceptance: a task runs to success on the sandbox; a task past its time limit fails 504."""

from __future__ import annotations

from collections.abc import Callable

from conftest import Server, prompt_body


def test_task_runs_to_success_on_the_sandbox(server: Server) -> None:
    key = server.key()
    answer = server.create(key, prompt_body())
    assert answer["code"] == 200
    record = server.wait(key, answer["data"]["taskId"])
    assert record["state"] == "success"


def test_a_task_past_its_time_limit_fails_504(start_server: Callable[..., Server]) -> None:
    server = start_server(task_timeout_seconds=0.5)
    key = server.key()
    task_id = server.create(key, prompt_body("slow [sandbox:delay=5000]"))["data"]["taskId"]
    record = server.wait(key, task_id)
    assert (record["state"], record["failCode"]) == ("fail", "504")
    assert record["failMsg"] == "timed out after 0.5 s"


def test_the_sandbox_delay_setting_slows_every_task(start_server: Callable[..., Server]) -> None:
    server = start_server(sandbox_delay_ms=400)
    key = server.key()
    record = server.wait(key, server.create(key, prompt_body())["data"]["taskId"])
    assert record["state"] == "success"
    assert record["costTime"] >= 400  # a lower bound: the delay happened

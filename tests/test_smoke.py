from __future__ import annotations

from conftest import Server, prompt_body


def test_task_runs_to_success_on_the_sandbox(server: Server) -> None:
    key = server.key()
    answer = server.create(key, prompt_body())
    assert answer["code"] == 200
    record = server.wait(key, answer["data"]["taskId"])
    assert record["state"] == "success"

"""Acceptance: callbacks survive a killed server: ``bananastand serve`` as a child process, kill
-9."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from standardwebhooks import Webhook

from conftest import ServerProcess, free_port, make_key, prompt_body
from receiver import Answer, Receiver
from test_webhooks import delivered, wait_info

Spawn = Callable[..., ServerProcess]

ENV = {
    "BANANASTAND_ALLOW_PRIVATE_NETWORKS": "127.0.0.1",
    "BANANASTAND_WEBHOOK_RETRY_SCHEDULE_SECONDS": "0," + ",".join(["0.3"] * 30),
    "BANANASTAND_WEBHOOK_TIMEOUT_SECONDS": "1",  # a claim's lease: 3 s
}


def call(child: ServerProcess, key: str, method: str, path: str, **kwargs: Any) -> Any:
    answer = httpx.request(
        method,
        child.base_url + path,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
        **kwargs,
    ).json()
    assert answer["code"] == 200, answer
    return answer["data"]


def test_kill_9_between_task_end_and_delivery_then_delivered(spawn: Spawn, tmp_path: Any) -> None:
    port = free_port()  # the receiver is down when the task ends
    first = spawn("serve", env=ENV)
    key = make_key(tmp_path / "data")
    body = {**prompt_body(), "callBackUrl": f"http://127.0.0.1:{port}/hook"}
    task_id = call(first, key, "POST", "/api/v1/jobs/createTask", json=body)["taskId"]
    pending = wait_info(first, key, task_id, lambda info: len(info["attempts"]) >= 1)
    assert pending["deliveryState"] == "pending"
    first.kill()

    receiver = Receiver(port=port)
    try:
        second = spawn("serve", env=ENV)
        info = wait_info(second, key, task_id, delivered)
        (got,) = receiver.wait_for(1)
        assert got.headers["webhook-id"] == pending["webhookId"] == info["webhookId"]
        secret = call(second, key, "GET", "/api/v1/account/webhook-secret")["secret"]
        assert Webhook(secret).verify(got.body, got.headers)["data"]["taskId"] == task_id
    finally:
        receiver.close()


def test_kill_9_mid_delivery_sends_again_after_restart(spawn: Spawn, tmp_path: Any) -> None:
    # The first request hangs: the server is killed while it waits for the answer.
    receiver = Receiver(script=[Answer(200, sleep_s=30)])
    try:
        first = spawn("serve", env=ENV)
        key = make_key(tmp_path / "data")
        body = {**prompt_body(), "callBackUrl": receiver.url}
        task_id = call(first, key, "POST", "/api/v1/jobs/createTask", json=body)["taskId"]
        receiver.wait_for(1)
        first.kill()

        second = spawn("serve", env=ENV)
        info = wait_info(second, key, task_id, delivered)
        got = receiver.wait_for(2)
        assert [request.headers["webhook-id"] for request in got] == [info["webhookId"]] * 2
        (attempt,) = info["attempts"]  # the killed one left no record: it never ended
        assert attempt["success"] is True
    finally:
        receiver.close()


def test_split_roles_worker_process_sends_callbacks(spawn: Spawn, tmp_path: Any) -> None:
    receiver = Receiver()
    try:
        api = spawn("serve", "--no-worker", env=ENV)
        spawn("worker", env=ENV)
        key = make_key(tmp_path / "data")
        body = {**prompt_body(), "callBackUrl": receiver.url}
        task_id = call(api, key, "POST", "/api/v1/jobs/createTask", json=body)["taskId"]
        wait_info(api, key, task_id, delivered)
        assert len(receiver.wait_for(1)) == 1
    finally:
        receiver.close()

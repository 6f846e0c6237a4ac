"""Acceptance: callbacks end to end: a real server delivering to real receivers on loopback.

The receivers are allow-listed (``allow_private_networks``); retry schedules are compressed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from bananastand.client import verify_callback
from conftest import Server, prompt_body
from processes import Serving
from receiver import Answer, Receiver
from waiting import wait_for

FAST = {
    "allow_private_networks": ["127.0.0.1"],
    "webhook_retry_schedule_seconds": [0.0] + [0.2] * 20,
    "webhook_timeout_seconds": 2.0,
}


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(*args: Any, **kwargs: Any) -> Receiver:
        made.append(Receiver(*args, **kwargs))
        return made[-1]

    yield make
    # All at once: each close waits up to half a second for its server loop to notice.
    with ThreadPoolExecutor(max_workers=max(len(made), 1)) as pool:
        list(pool.map(Receiver.close, made))


def callback_info(server: Serving, key: str, task_id: str) -> dict[str, Any]:
    """The task's callback (``GET /api/v1/jobs/callbacks``) from a server here or a child."""
    answer = httpx.get(
        f"{server.base_url}/api/v1/jobs/callbacks",
        params={"taskId": task_id},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ).json()
    assert answer["code"] == 200, answer
    data: dict[str, Any] = answer["data"]
    return data


def wait_info(
    server: Serving, key: str, task_id: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    return wait_for(
        lambda: callback_info(server, key, task_id), done, what=f"the callback of {task_id}"
    )


def delivered(info: dict[str, Any]) -> bool:
    return bool(info["deliveryState"] == "delivered")


def gave_up(info: dict[str, Any]) -> bool:
    return bool(info["deliveryState"] == "failed")


def secret_of(server: Server, key: str, *, rotate: bool = False) -> dict[str, Any]:
    path = "/api/v1/account/webhook-secret" + ("/rotate" if rotate else "")
    call = server.client.post if rotate else server.client.get
    answer = call(path, headers={"Authorization": f"Bearer {key}"}).json()
    assert answer["code"] == 200, answer
    data: dict[str, Any] = answer["data"]
    return data


def create_with_callback(server: Server, key: str, url: str, prompt: str = "a banana") -> str:
    answer = server.create(key, {**prompt_body(prompt), "callBackUrl": url})
    assert answer["code"] == 200, answer
    task_id: str = answer["data"]["taskId"]
    return task_id


def hosted_signature(secret: str, task_id: str, timestamp: str) -> str:
    """The hosted API's scheme, written out by hand: HMAC keyed with the secret string."""
    digest = hmac.new(secret.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()


def test_delivery_is_signed_with_both_schemes(
    start_server: Callable[..., Server], receivers: Callable[..., Receiver]
) -> None:
    server = start_server(**FAST)
    receiver = receivers()
    key = server.key()
    task_id = create_with_callback(server, key, receiver.url)
    (got,) = receiver.wait_for(1)
    record = server.wait(key, task_id)
    body = json.loads(got.body)
    assert body == {"code": 200, "msg": "success", "message": "success", "data": record}
    assert got.path == "/hook"

    secret = secret_of(server, key)["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert Webhook(secret).verify(got.body, got.headers) == body
    timestamp = got.headers["X-Webhook-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 300
    assert got.headers["X-Webhook-Signature"] == hosted_signature(secret, task_id, timestamp)
    assert got.headers["webhook-timestamp"] == timestamp
    assert verify_callback(got.body, got.headers, secret) == body

    info = wait_info(server, key, task_id, delivered)
    assert info["webhookId"] == got.headers["webhook-id"]
    assert info["callBackUrl"] == receiver.url
    (attempt,) = info["attempts"]
    assert attempt["success"] is True
    assert attempt["httpStatus"] == 200
    assert attempt["error"] == ""
    assert isinstance(attempt["durationMs"], int)
    assert 0 <= attempt["durationMs"] <= 15_000  # within the delivery timeout


def test_failed_task_callback_has_code_501(
    start_server: Callable[..., Server], receivers: Callable[..., Receiver]
) -> None:
    server = start_server(**FAST)
    receiver = receivers()
    key = server.key()
    task_id = create_with_callback(server, key, receiver.url, "[sandbox:fail=safety]")
    (got,) = receiver.wait_for(1)
    body = json.loads(got.body)
    assert body["code"] == 501
    assert body["data"] == server.wait(key, task_id)
    assert body["data"]["failCode"] == "403"
    assert body["msg"] == body["data"]["failMsg"]


def test_receiver_down_then_up_is_delivered_later(
    start_server: Callable[..., Server], receivers: Callable[..., Receiver]
) -> None:
    from conftest import free_port

    server = start_server(**FAST)
    port = free_port()  # nothing listens there yet
    key = server.key()
    task_id = create_with_callback(server, key, f"http://127.0.0.1:{port}/hook")
    assert server.wait(key, task_id)["state"] == "success"
    info = wait_info(server, key, task_id, lambda info: len(info["attempts"]) >= 2)
    assert info["deliveryState"] == "pending"
    for attempt in info["attempts"]:
        assert attempt["success"] is False
        assert attempt["httpStatus"] is None
        assert "could not connect" in attempt["error"]

    receiver = receivers(port=port)
    info = wait_info(server, key, task_id, delivered)
    (got,) = receiver.wait_for(1)
    assert got.headers["webhook-id"] == info["webhookId"]
    *failures, last = info["attempts"]
    assert len(failures) >= 2
    assert all(not attempt["success"] for attempt in failures)
    assert last["success"] is True
    assert last["httpStatus"] == 200


def test_500s_then_200_retries_with_the_same_webhook_id(
    start_server: Callable[..., Server], receivers: Callable[..., Receiver]
) -> None:
    server = start_server(**FAST)
    receiver = receivers(script=[Answer(500), Answer(500), Answer(200)])
    key = server.key()
    task_id = create_with_callback(server, key, receiver.url)
    info = wait_info(server, key, task_id, delivered)
    got = receiver.wait_for(3)
    assert len(got) == 3
    assert {request.headers["webhook-id"] for request in got} == {info["webhookId"]}
    assert [a["httpStatus"] for a in info["attempts"]] == [500, 500, 200]
    assert [a["error"] for a in info["attempts"]] == ["HTTP 500", "HTTP 500", ""]
    assert [a["success"] for a in info["attempts"]] == [False, False, True]


def test_redirect_is_not_followed_and_counts_as_failure(
    start_server: Callable[..., Server], receivers: Callable[..., Receiver]
) -> None:
    server = start_server(**{**FAST, "webhook_retry_schedule_seconds": [0.0, 0.1]})
    receiver = receivers(default=Answer(301, {"Location": "/elsewhere"}))
    key = server.key()
    task_id = create_with_callback(server, key, receiver.url)
    info = wait_info(server, key, task_id, gave_up)
    assert [a["httpStatus"] for a in info["attempts"]] == [301, 301]
    for attempt in info["attempts"]:
        assert attempt["error"] == "redirect not followed (HTTP 301 to /elsewhere)"
    assert [request.path for request in receiver.requests] == ["/hook", "/hook"]


def test_410_gone_stops_retrying(
    start_server: Callable[..., Server], receivers: Callable[..., Receiver]
) -> None:
    server = start_server(**FAST)  # twenty more tries left on the schedule
    receiver = receivers(default=Answer(410))
    key = server.key()
    task_id = create_with_callback(server, key, receiver.url)
    info = wait_info(server, key, task_id, gave_up)
    (attempt,) = info["attempts"]
    assert attempt["httpStatus"] == 410
    assert "Gone" in attempt["error"]
    assert len(receiver.requests) == 1
    assert server.wait(key, task_id)["state"] == "success"  # the task's outcome stands


def test_retry_after_is_honoured(
    start_server: Callable[..., Server], receivers: Callable[..., Receiver]
) -> None:
    server = start_server(**{**FAST, "webhook_retry_schedule_seconds": [0.0, 0.05, 0.05]})
    receiver = receivers(script=[Answer(503, {"Retry-After": "1"}), Answer(200)])
    key = server.key()
    task_id = create_with_callback(server, key, receiver.url)
    wait_info(server, key, task_id, delivered)
    first, second = receiver.wait_for(2)
    assert second.at - first.at >= 1.0  # not the schedule's 0.05 s


def test_slow_receiver_does_not_block_other_deliveries(
    start_server: Callable[..., Server], receivers: Callable[..., Receiver]
) -> None:
    """One receiver holds every request until the test lets go (within the sender's
    timeout, however slow the machine); 100 others on other ports answer at once. The
    slow one fills its per-host slots, the others are all delivered while its requests
    are still hanging, and its own are delivered once it answers."""
    server = start_server(
        **{**FAST, "webhook_timeout_seconds": 300.0, "webhook_per_host_concurrency": 4}
    )
    release = threading.Event()
    try:
        _slow_and_fast(server, receivers, release)
    finally:
        release.set()  # a failed check must not leave the server's requests hanging


def _slow_and_fast(
    server: Server, receivers: Callable[..., Receiver], release: threading.Event
) -> None:
    slow = receivers(default=Answer(200, hold=release))
    fast = [receivers() for _ in range(100)]
    key = server.key()
    slow_tasks = [create_with_callback(server, key, slow.url) for _ in range(6)]
    slow.wait_for(4)
    fast_tasks = [create_with_callback(server, key, receiver.url) for receiver in fast]
    for receiver in fast:
        receiver.wait_for(1)
    # Still hanging: the slow host got only its 4 slots, none of its attempts has ended.
    assert len(slow.requests) == 4
    for task_id in slow_tasks:
        assert callback_info(server, key, task_id)["attempts"] == []
    for task_id in fast_tasks:
        info = wait_info(server, key, task_id, delivered)
        assert len(info["attempts"]) == 1
    for task_id in slow_tasks:
        assert server.wait(key, task_id)["state"] == "success"  # tasks were never held up
    release.set()
    for task_id in slow_tasks:
        assert len(wait_info(server, key, task_id, delivered)["attempts"]) == 1
    assert len(slow.requests) == 6


def test_rotation_window_signs_with_both_secrets(
    start_server: Callable[..., Server], receivers: Callable[..., Receiver]
) -> None:
    server = start_server(**FAST)
    receiver = receivers()
    key = server.key()
    old = secret_of(server, key)["secret"]
    rotated = secret_of(server, key, rotate=True)
    new = rotated["secret"]
    assert new != old
    assert rotated["previousSecret"] == old
    assert rotated["previousSecretExpireTime"] == rotated["rotateTime"] + 24 * 3600 * 1000
    assert secret_of(server, key)["secret"] == new

    create_with_callback(server, key, receiver.url)
    (got,) = receiver.wait_for(1)
    signatures = got.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    for secret in (new, old):
        Webhook(secret).verify(got.body, got.headers)
        assert verify_callback(got.body, got.headers, secret)["code"] == 200
    for secret, signature in zip((new, old), signatures, strict=True):
        alone = {**got.headers, "webhook-signature": signature}
        Webhook(secret).verify(got.body, alone)
    task_id = json.loads(got.body)["data"]["taskId"]
    timestamp = got.headers["X-Webhook-Timestamp"]
    assert got.headers["X-Webhook-Signature"] == hosted_signature(new, task_id, timestamp)
    assert got.headers["X-Webhook-Signature"] != hosted_signature(old, task_id, timestamp)


def test_rotation_window_closed_signs_with_the_new_secret_only(
    start_server: Callable[..., Server], receivers: Callable[..., Receiver]
) -> None:
    server = start_server(**FAST, webhook_secret_rotation_seconds=0)
    receiver = receivers()
    key = server.key()
    secret_of(server, key)
    rotated = secret_of(server, key, rotate=True)
    assert rotated["previousSecret"] is None
    create_with_callback(server, key, receiver.url)
    (got,) = receiver.wait_for(1)
    assert " " not in got.headers["webhook-signature"]
    Webhook(rotated["secret"]).verify(got.body, got.headers)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest",
        "http://[::1]:8080/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://2130706433/hook",  # 127.0.0.1 as the resolver reads it
        "http://0.0.0.0/hook",
    ],
)
def test_private_literal_callback_url_is_refused(server: Server, url: str) -> None:
    key = server.key()
    answer = server.create(key, {**prompt_body(), "callBackUrl": url})
    assert answer["code"] == 422
    assert answer["msg"].startswith("callBackUrl: ")
    assert "not a publicly routable address" in answer["msg"]


def test_allow_listed_literal_is_accepted_and_names_are_checked_at_delivery(
    start_server: Callable[..., Server], receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers()
    allowed = start_server(**FAST)
    key = allowed.key()
    assert allowed.create(key, {**prompt_body(), "callBackUrl": receiver.url})["code"] == 200

    plain = start_server(webhook_retry_schedule_seconds=[0.0])  # no allow-list
    key = plain.key()
    by_name = f"http://localhost:{receiver.port}/hook"
    task_id = create_with_callback(plain, key, by_name)  # a name: checked when sending
    info = wait_info(plain, key, task_id, gave_up)
    (attempt,) = info["attempts"]
    assert attempt["httpStatus"] is None
    assert "not publicly routable" in attempt["error"]
    receiver.wait_for(1)  # only the allowed server's callback arrived
    assert len(receiver.requests) == 1


def test_callbacks_api_is_scoped_and_resend_keeps_the_webhook_id(
    start_server: Callable[..., Server], receivers: Callable[..., Receiver]
) -> None:
    server = start_server(**FAST)
    receiver = receivers()
    key = server.key()
    other = server.key()
    task_id = create_with_callback(server, key, receiver.url)
    first = wait_info(server, key, task_id, delivered)

    auth_other = {"Authorization": f"Bearer {other}"}
    listed = server.client.get(
        "/api/v1/jobs/callbacks", params={"taskId": task_id}, headers=auth_other
    ).json()
    assert listed["code"] == 404
    resent = server.client.post(
        "/api/v1/jobs/callbacks/resend", json={"taskId": task_id}, headers=auth_other
    ).json()
    assert resent["code"] == 404

    auth = {"Authorization": f"Bearer {key}"}
    resent = server.client.post(
        "/api/v1/jobs/callbacks/resend", json={"taskId": task_id}, headers=auth
    ).json()
    assert resent["code"] == 200
    assert resent["data"]["webhookId"] == first["webhookId"]
    second = wait_info(server, key, task_id, lambda info: len(info["attempts"]) == 2)
    assert second["deliveryState"] == "delivered"
    got = receiver.wait_for(2)
    assert [request.headers["webhook-id"] for request in got] == [first["webhookId"]] * 2

    no_callback = server.create(key, prompt_body())["data"]["taskId"]
    answer = server.client.get(
        "/api/v1/jobs/callbacks", params={"taskId": no_callback}, headers=auth
    ).json()
    assert answer["code"] == 422
    assert answer["msg"] == "taskId: the task has no callBackUrl"
    assert server.client.get("/api/v1/jobs/callbacks", headers=auth).json()["code"] == 422
    missing = server.client.post("/api/v1/jobs/callbacks/resend", json={}, headers=auth).json()
    assert missing["code"] == 422


def test_canceled_task_gets_a_callback_in_the_outbox(
    start_server: Callable[..., Server], receivers: Callable[..., Receiver]
) -> None:
    server = start_server(run_worker=False, **FAST)  # nothing runs or sends here
    receiver = receivers()
    key = server.key()
    task_id = create_with_callback(server, key, receiver.url)
    before = callback_info(server, key, task_id)
    assert before["deliveryState"] == "waiting"
    assert before["webhookId"] is None
    resend = server.client.post(
        "/api/v1/jobs/callbacks/resend",
        json={"taskId": task_id},
        headers={"Authorization": f"Bearer {key}"},
    ).json()
    assert resend["code"] == 422
    canceled = server.client.post(
        "/api/v1/jobs/cancel", json={"taskId": task_id}, headers={"Authorization": f"Bearer {key}"}
    ).json()
    assert canceled["code"] == 200
    after = callback_info(server, key, task_id)
    assert after["deliveryState"] == "pending"
    assert after["webhookId"].startswith("msg_")
    assert after["attempts"] == []


def test_webhook_secret_needs_a_key(server: Server) -> None:
    answer = server.client.get("/api/v1/account/webhook-secret").json()
    assert answer["code"] == 401

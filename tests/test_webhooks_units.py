"""Integration: the signing SDK, the retry schedule, and the webhook secret CLI.

The outbox's queries are proven with every other query in the store contract suite."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from bananastand.client import CallbackVerificationError, verify_callback
from bananastand.settings import Settings
from bananastand.webhooks.schedule import judge, next_delay_s, parse_retry_after
from bananastand.webhooks.signing import new_secret, signed_headers
from test_cli import cli, create_key


def test_schedule_retry_after_and_verdicts() -> None:
    schedule = [0.0, 5.0, 300.0]
    assert 4.5 <= (next_delay_s(schedule, 1, None) or 0) <= 5.5
    assert 270 <= (next_delay_s(schedule, 2, None) or 0) <= 330
    assert next_delay_s(schedule, 3, None) is None
    assert (next_delay_s(schedule, 1, 60.0) or 0) == 60.0
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("soon") is None
    http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 100))
    assert 90 <= (parse_retry_after(http_date) or 0) <= 101
    assert judge(204, {}).success
    assert judge(410, {}).final
    assert (
        judge(302, {"location": "https://x/"}).error
        == "redirect not followed (HTTP 302 to https://x/)"
    )
    assert judge(503, {"retry-after": "7"}).retry_after_s == 7.0


def test_settings_schedule_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANANASTAND_WEBHOOK_RETRY_SCHEDULE_SECONDS", "0, 1.5, 30")
    assert Settings().webhook_retry_schedule_seconds == [0.0, 1.5, 30.0]
    assert Settings(webhook_retry_schedule_seconds=[0]).webhook_timeout_seconds == 15.0
    with pytest.raises(ValueError, match="starting with 0"):
        Settings(webhook_retry_schedule_seconds=[5, 10])


def signed(
    body: bytes, *secrets: str, task_id: str = "task_1", at: int | None = None
) -> dict[str, str]:
    return signed_headers(
        msg_id="msg_1",
        task_id=task_id,
        body=body,
        signing=secrets,
        timestamp=at or int(time.time()),
    )


BODY = json.dumps({"code": 200, "msg": "success", "data": {"taskId": "task_1"}}).encode()


def test_verify_callback_accepts_either_scheme() -> None:
    secret = new_secret()
    headers = signed(BODY, secret)
    assert verify_callback(BODY, headers, secret)["data"]["taskId"] == "task_1"
    assert Webhook(secret).verify(BODY, headers)["code"] == 200
    hosted_only = {k: v for k, v in headers.items() if k.startswith("X-")}
    assert verify_callback(BODY.decode(), hosted_only, secret)["code"] == 200
    upper = {k.upper(): v for k, v in headers.items()}
    assert verify_callback(BODY, upper, secret)["code"] == 200


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("tampered body", "no webhook-signature matches"),
        ("wrong secret", "no webhook-signature matches"),
        ("stale", "tolerance"),
        ("hosted wrong task", "X-Webhook-Signature does not match"),
        ("no headers", "no signature headers"),
    ],
)
def test_verify_callback_refuses(case: str, expected: str) -> None:
    secret = new_secret()
    body, check_secret, headers = BODY, secret, signed(BODY, secret)
    if case == "tampered body":
        body = BODY.replace(b"success", b"failure")
    elif case == "wrong secret":
        check_secret = new_secret()
    elif case == "stale":
        headers = signed(BODY, secret, at=int(time.time()) - 301)
    elif case == "hosted wrong task":
        headers = {
            k: v for k, v in signed(BODY, secret, task_id="task_2").items() if k.startswith("X-")
        }
    else:
        headers = {}
    with pytest.raises(CallbackVerificationError, match=expected):
        verify_callback(body, headers, check_secret)


def test_verify_callback_imports_without_server_dependencies() -> None:
    blocked = ["sqlalchemy", "fastapi", "httpx", "httpcore", "pydantic", "orjson", "uvicorn"]
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
        + "from bananastand.client import verify_callback, CallbackVerificationError\n"
        + "print('ok', verify_callback.__module__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok bananastand.client.webhooks"


def test_cli_shows_and_rotates_the_webhook_secret(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _, account, _ = create_key(data_dir, "--test")
    shown = cli(data_dir, "webhooks", "secret", "--account", account)
    assert shown.returncode == 0, shown.stderr
    secret = shown.stdout.strip().splitlines()[-1]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    again = cli(data_dir, "webhooks", "secret", "--account", account)
    assert again.stdout.strip().splitlines()[-1] == secret
    rotated = cli(data_dir, "webhooks", "secret", "--rotate", "--account", account)
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.strip().splitlines()[-1] not in ("", secret)
    unknown = cli(data_dir, "webhooks", "secret", "--account", "acct_nope")
    assert unknown.returncode == 2
    assert "account acct_nope does not exist" in unknown.stderr

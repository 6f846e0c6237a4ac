"""Integration: the outbox queries on a real SQLite file, the signing SDK, the schedule, and the
CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from bananastand.client import CallbackVerificationError, verify_callback
from bananastand.contract import TaskState
from bananastand.ids import new_task_id
from bananastand.settings import Settings
from bananastand.store.sql import accounts as account_queries
from bananastand.store.sql import callbacks as outbox
from bananastand.store.sql import tasks as queries
from bananastand.store.sqlite.database import Database
from bananastand.webhooks import judge, new_secret, next_delay_s, parse_retry_after, signed_headers
from test_cli import cli, create_key
from test_store import ACCOUNT, T0, claim, finish, open_db, rescue

URL = "https://hooks.example/in"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_db(tmp_path / "store.db")
    asyncio.run(
        database.write(
            partial(account_queries.create_account, account_id=ACCOUNT, name="", now_ms=T0)
        )
    )
    yield database
    asyncio.run(database.close())


async def add_task(db: Database, callback_url: str | None = URL) -> str:
    new = queries.NewTask(
        id=new_task_id(),
        account_id=ACCOUNT,
        key_id="key_x",
        provider="sandbox",
        model="nano-banana-pro",
        param="{}",
        input='{"prompt":"a banana"}',
        callback_url=callback_url,
    )
    made = await db.write(partial(queries.create_task, new=new, now_ms=T0, idempotency=None))
    return made.task_id


async def state_of(db: Database, task_id: str) -> str | None:
    found = await db.read(partial(outbox.callback_of_task, task_id=task_id, account_id=ACCOUNT))
    return found[1].state if found[1] else None


async def claim_due(
    db: Database, *, limit: int = 10, in_flight: dict[str, int] | None = None, now: int = T0 + 200
) -> list[outbox.ClaimedCallback]:
    return await db.write(
        partial(
            outbox.claim_due,
            lease_token="t" * 24,
            limit=limit,
            per_host=3,
            in_flight=in_flight or {},
            now_ms=now,
            lease_ms=1000,
            new_secret=new_secret,
        )
    )


def test_every_way_a_task_ends_writes_its_callback(db: Database) -> None:
    async def scenario() -> None:
        done, lost, rescued = [await add_task(db) for _ in range(3)]
        claims = {c.task.id: c for c in await claim(db, limit=3)}
        assert await finish(db, done, claims[done].lease_token)
        assert await state_of(db, done) == "pending"
        assert await finish(db, lost, "not-the-lease") is False
        assert await state_of(db, lost) is None  # no outcome, no callback

        canceled = await add_task(db)
        ended = await db.write(
            partial(queries.cancel_task, task_id=canceled, account_id=ACCOUNT, now_ms=T0 + 50)
        )
        assert ended is not None
        assert ended.state is TaskState.FAIL
        assert await state_of(db, canceled) == "pending"

        got = await rescue(db, now=T0 + 10_000, max_attempts=1)
        assert sorted(got.failed) == sorted([lost, rescued])
        assert await state_of(db, rescued) == "pending"

        no_url = await add_task(db, callback_url=None)
        (held,) = await claim(db, limit=1)
        assert held.task.id == no_url
        assert await finish(db, no_url, held.lease_token)
        assert await state_of(db, no_url) is None

    asyncio.run(scenario())


def test_claim_is_fair_per_host_and_skips_saturated_hosts(db: Database) -> None:
    async def scenario() -> None:
        for url in ["https://a.example/x"] * 8 + ["https://b.example:8443/y"] * 2:
            task_id = await add_task(db, url)
            (held,) = await claim(db, limit=1)
            assert await finish(db, task_id, held.lease_token)
        first = await claim_due(db, limit=10)
        hosts = sorted(c.host_key for c in first)
        assert hosts == ["a.example:443"] * 3 + ["b.example:8443"] * 2
        assert first[0].secret.secret.startswith("whsec_")
        # A saturated host is skipped; leased rows are not claimed twice.
        again = await claim_due(db, limit=10, in_flight={"a.example:443": 3})
        assert again == []
        # The lease runs out (the sender was killed): claimed again.
        later = await claim_due(db, limit=10, now=T0 + 200 + 1001)
        assert sorted(c.host_key for c in later) == ["a.example:443"] * 3 + ["b.example:8443"] * 2

    asyncio.run(scenario())


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

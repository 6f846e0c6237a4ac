"""Acceptance: tasks relayed to a hosted jobs API, through real servers, the real worker and
the real database: the loopback fake of the hosted API (``hosted_fake``), the fake Gemini,
and a second bananastand as upstreams."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from accounts_helpers import ADMIN_TOKEN, admin_ok, balance, call, new_account
from bananastand.client import Client
from bananastand.fake_gemini import FakeGemini, Reply
from conftest import Server, ServerProcess, free_port, make_key, prompt_body
from hosted_fake import HostedFake
from processes import create, record, wait_record
from waiting import wait_for

PRICE = 18


def _reference() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "blue").save(buffer, "PNG")
    return buffer.getvalue()


#: Our own upload: a reference whose bytes the upstream must receive, told apart from the
#: upstream's own images by colour and size.
REFERENCE = _reference()


def jobs_api(hosted: HostedFake, **fields: Any) -> dict[str, Any]:
    """An ``[upstreams.NAME]`` table for the hosted fake (its key from the environment)."""
    return {
        "kind": "jobs-api",
        "base_url": hosted.base_url,
        "api_key": "env:RELAY_TEST_KEY",
        "poll_interval_seconds": 0.2,
        "backoff_seconds": 0.01,
        **fields,
    }


@pytest.fixture
def relaying(
    start_server: Callable[..., Server], hosted: HostedFake, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Server]:
    """Start a server whose live keys' nano-banana-pro tasks go to ``upstreams``' route."""
    monkeypatch.setenv("RELAY_TEST_KEY", hosted.key)

    def start(route: list[str] | None = None, **upstreams: dict[str, Any]) -> Server:
        tables = upstreams or {"kie": jobs_api(hosted)}
        return start_server(
            admin_token=ADMIN_TOKEN,
            allow_private_networks=["127.0.0.1"],
            upstreams=tables,
            routes={"nano-banana-pro": route or list(tables)},
        )

    return start


def run_task(server: Server, key: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    answer = server.create(key, body or prompt_body())
    assert answer["code"] == 200, answer
    return server.wait(key, answer["data"]["taskId"])


def upload(server: Server, key: str, data: bytes) -> str:
    answer = call(
        server,
        "POST",
        "/api/file-stream-upload",
        key,
        files={"file": ("ref.png", data, "image/png")},
        data={"uploadPath": "refs"},
    ).json()
    assert answer["code"] == 200, answer
    url: str = answer["data"]["downloadUrl"]
    return url


def result_of(record: dict[str, Any]) -> str:
    [url] = json.loads(record["resultJson"])["resultUrls"]
    return str(url)


def test_a_relayed_task_uploads_our_links_and_hosts_the_result_itself(
    relaying: Callable[..., Server], hosted: HostedFake
) -> None:
    server = relaying()
    _, key = new_account(server, 100)
    own = upload(server, key, REFERENCE)
    foreign = f"{hosted.base_url}/results/elsewhere.png"
    record = run_task(server, key, prompt_body(image_input=[own, foreign]))
    assert record["state"] == "success", record
    [upstream_task] = hosted.tasks
    sent = hosted.request_of(upstream_task)
    reuploaded, passed = sent["input"]["image_input"]
    assert passed == foreign
    assert reuploaded.startswith(f"{hosted.base_url}/files/")
    assert hosted.uploads[reuploaded.rsplit("/", 1)[1]] == REFERENCE
    assert "callBackUrl" not in sent
    # The result is ours: served by our server from our storage.
    url = result_of(record)
    assert url.startswith(f"{server.base_url}/files/")
    with Image.open(io.BytesIO(httpx.get(url, timeout=30).content)) as image:
        assert image.size == (1024, 1024)
    assert balance(server, key) == 100 - PRICE


def test_an_upstream_failure_is_mapped_and_refunded_once(
    relaying: Callable[..., Server], hosted: HostedFake
) -> None:
    hosted.fail_with = ("403", "their filter said no")
    server = relaying()
    account_id, key = new_account(server, 100)
    record = run_task(server, key)
    assert (record["state"], record["failCode"]) == ("fail", "403")
    assert record["failMsg"] == "kie: their filter said no"
    assert balance(server, key) == 100
    ledger = admin_ok(server, "GET", f"/admin/accounts/{account_id}")["ledger"]
    assert sorted(row["amount"] for row in ledger) == [-PRICE, PRICE, 100]


def test_google_failing_over_to_the_relay(
    relaying: Callable[..., Server], hosted: HostedFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeGemini() as gemini:
        gemini.script(*[Reply(status=503)] * 10)
        monkeypatch.setenv("RELAY_TEST_GOOGLE_KEY", gemini.api_key)
        server = relaying(
            ["google", "kie"],
            google={
                "kind": "gemini",
                "api_keys": ["env:RELAY_TEST_GOOGLE_KEY"],
                "base_url": gemini.base_url,
                "max_attempts": 1,
            },
            kie=jobs_api(hosted),
        )
        _, key = new_account(server, 100)
        record = run_task(server, key)
        assert record["state"] == "success", record
        assert len(gemini.requests) == 1
    assert len(hosted.tasks) == 1
    assert balance(server, key) == 100 - PRICE


def test_a_refused_key_opens_the_upstreams_breaker_at_once(
    relaying: Callable[..., Server], hosted: HostedFake
) -> None:
    """One 401 is enough (not the five failures in a row the breaker waits for otherwise):
    our key for them is wrong, so every task would fail the same way."""
    hosted.refuse_creates = [401]
    server = relaying(
        kie=jobs_api(hosted, breaker_failures=5, breaker_cooldown_seconds=3600),
    )
    _, key = new_account(server, 100)
    first = run_task(server, key)
    assert (first["state"], first["failCode"]) == ("fail", "500")
    assert "kie refused our API key for it (401)" in first["failMsg"]
    second = run_task(server, key)
    assert second["state"] == "fail"
    assert "circuit breaker is open" in second["failMsg"]
    assert hosted.create_calls == 1
    assert balance(server, key) == 100


def test_our_key_refused_while_following_ends_the_task_and_opens_the_breaker(
    relaying: Callable[..., Server], hosted: HostedFake
) -> None:
    """The upstream task exists, so the task is not handed on (a second upstream would
    make the same image again); but our key no longer works there, so the breaker opens
    and the next task goes nowhere near it."""
    hosted.hang = True
    server = relaying(
        kie=jobs_api(hosted, breaker_failures=5, breaker_cooldown_seconds=3600),
    )
    _, key = new_account(server, 100)
    answer = server.create(key, prompt_body())
    assert answer["code"] == 200, answer
    wait_for(lambda: len(hosted.tasks) == 1, what="the upstream task made")
    hosted.key = "rotated-by-them"  # every later call with our key: 401
    first = server.wait(key, answer["data"]["taskId"])
    assert (first["state"], first["failCode"]) == ("fail", "500"), first
    second = run_task(server, key)
    assert second["state"] == "fail"
    assert "circuit breaker is open" in second["failMsg"]
    assert hosted.create_calls == 1
    assert balance(server, key) == 100


@pytest.mark.parametrize("idempotency_keys", [False, True])
def test_a_lost_create_answer(
    relaying: Callable[..., Server], hosted: HostedFake, idempotency_keys: bool
) -> None:
    """Without idempotency keys the task fails (refunded) rather than risk a second
    upstream task; with them the same request is sent again and answered with the task."""
    hosted.honour_idempotency_keys = True
    hosted.drop_creates = 1
    server = relaying(kie=jobs_api(hosted, idempotency_keys=idempotency_keys))
    _, key = new_account(server, 100)
    record = run_task(server, key)
    assert len(hosted.tasks) == 1
    if idempotency_keys:
        assert record["state"] == "success", record
        assert hosted.create_calls == 2
        assert hosted.idempotency_keys[0] == hosted.idempotency_keys[1] is not None
        assert balance(server, key) == 100 - PRICE
    else:
        assert (record["state"], record["failCode"]) == ("fail", "500")
        assert "not sent again" in record["failMsg"]
        assert hosted.create_calls == 1
        assert balance(server, key) == 100


def test_our_client_through_a_second_bananastand_as_the_upstream(
    start_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    peer = start_server(live_provider="sandbox", billing=False)
    peer_key = peer.key(test=False)
    monkeypatch.setenv("RELAY_TEST_KEY", peer_key)
    ours = start_server(
        admin_token=ADMIN_TOKEN,
        allow_private_networks=["127.0.0.1"],
        upstreams={
            "peer": {
                "kind": "jobs-api",
                "base_url": peer.base_url,
                "api_key": "env:RELAY_TEST_KEY",
                "poll_interval_seconds": 0.2,
            }
        },
        routes={"nano-banana-pro": ["peer"]},
    )
    _, key = new_account(ours, 100)
    with Client(ours.base_url, key) as client:
        result = client.generate("a banana, relayed", [REFERENCE], aspect_ratio="16:9")
    [image] = result.images
    assert result.task.result_urls[0].startswith(f"{ours.base_url}/files/")
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.size == (1376, 768)
    listed = call(peer, "GET", "/api/v1/jobs/list", peer_key).json()["data"]["items"]
    [relayed] = listed
    sent = json.loads(relayed["param"])
    assert sent["input"]["prompt"] == "a banana, relayed"
    assert sent["input"]["aspect_ratio"] == "16:9"
    [reference] = sent["input"]["image_input"]
    assert reference.startswith(f"{peer.base_url}/files/")
    assert httpx.get(reference, timeout=30).content == REFERENCE
    assert balance(ours, key) == 100 - PRICE


# -- spawned servers: a restart, and callbacks to a public URL ---------------------------------


def write_config(folder: Path, upstreams: dict[str, dict[str, Any]], route: list[str]) -> Path:
    """``BANANASTAND_CONFIG`` for a child server (JSON scalars and lists are TOML too)."""
    lines = []
    for name, table in upstreams.items():
        lines.append(f"[upstreams.{name}]")
        lines += [f"{field} = {json.dumps(value)}" for field, value in table.items()]
    lines += ["[routes]", f'"nano-banana-pro" = {json.dumps(route)}']
    path = folder / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def child_env(tmp_path: Path, hosted: HostedFake, port: int, **table: Any) -> dict[str, str]:
    config = write_config(tmp_path, {"kie": jobs_api(hosted, **table)}, ["kie"])
    return {
        "BANANASTAND_CONFIG": str(config),
        "BANANASTAND_PORT": str(port),
        "BANANASTAND_BILLING": "false",
        "BANANASTAND_ALLOW_PRIVATE_NETWORKS": "127.0.0.1",
        "BANANASTAND_LEASE_SECONDS": "2",
        "RELAY_TEST_KEY": hosted.key,
    }


def test_a_restart_mid_relay_follows_the_same_upstream_task(
    spawn: Callable[..., ServerProcess], hosted: HostedFake, tmp_path: Path
) -> None:
    hosted.hang = True
    env = child_env(tmp_path, hosted, free_port())
    first = spawn("serve", env=env)
    key = make_key(tmp_path / "data", test=False)
    task_id = create(first, key, "a banana")
    wait_record(first, key, task_id, {"generating"})
    [upstream_task] = hosted.tasks
    first.kill()
    hosted.finish(upstream_task, call_back=False)
    polled_before = hosted.polls[upstream_task]
    second = spawn("serve", env=env)
    record = wait_record(second, key, task_id, {"success", "fail"})
    assert record["state"] == "success", record
    assert hosted.create_calls == 1
    assert list(hosted.tasks) == [upstream_task]
    assert hosted.polls[upstream_task] > polled_before
    assert httpx.get(result_of(record), timeout=30).status_code == 200


def test_an_upstream_callback_wakes_the_task_and_a_forged_one_is_ignored(
    spawn: Callable[..., ServerProcess], hosted: HostedFake, tmp_path: Path
) -> None:
    """Polling is an hourly fallback here: only the verified callback can end the task.
    The API process receives it; the task runs in a worker process of its own."""
    hosted.hang = True
    hosted.webhook_secret = "not-our-secret"
    port = free_port()
    env = child_env(
        tmp_path,
        hosted,
        port,
        webhook_secret="env:RELAY_TEST_HOOK_SECRET",
        poll_interval_seconds=3600,
    )
    public = f"http://127.0.0.1:{port}"
    child = spawn(
        "serve",
        env={
            **env,
            "BANANASTAND_PUBLIC_URL": public,
            "BANANASTAND_WORKER_PROCESSES": "1",
            "RELAY_TEST_HOOK_SECRET": "our-secret",
        },
    )
    key = make_key(tmp_path / "data", test=False)
    task_id = create(child, key, "a banana")
    wait_record(child, key, task_id, {"generating"})
    [upstream_task] = hosted.tasks
    assert hosted.request_of(upstream_task)["callBackUrl"] == f"{public}/hooks/upstream/kie"

    hosted.finish(upstream_task)  # signed with the wrong secret
    assert [(task, status) for task, status, _ in hosted.callbacks] == [(upstream_task, 401)]
    wait_for(lambda: "failed verification" in child.log(), what="the forged callback logged")
    assert record(child, key, task_id)["state"] == "generating"

    hosted.webhook_secret = "our-secret"
    hosted.finish(upstream_task)
    assert [status for _, status, _ in hosted.callbacks] == [401, 200]
    done = wait_record(child, key, task_id, {"success", "fail"})
    assert done["state"] == "success", done

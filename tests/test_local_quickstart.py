"""Acceptance: ``make run`` is the local quickstart: ``serve --allow-loopback`` on a loopback
address lets
callbacks reach a receiver on this machine, and says so; ``serve`` alone keeps refusing
private addresses, with messages that name the setting that opens them."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest

from bananastand.settings import Settings
from conftest import Server, ServerProcess, prompt_body
from receiver import Receiver
from test_webhooks import create_with_callback, gave_up, wait_info
from test_webhooks import receivers as receivers  # the fixture

pytestmark = pytest.mark.fresh_data  # make run on a new machine: serve migrates its new file

Spawn = Callable[..., ServerProcess]
KEY = re.compile(r"bs_test_[A-Za-z0-9]{32}")
SETTING = "BANANASTAND_ALLOW_PRIVATE_NETWORKS"


@pytest.fixture(autouse=True)
def operator_left_it_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spawned servers inherit this environment: the operator set no allow-list."""
    monkeypatch.delenv(SETTING, raising=False)
    monkeypatch.delenv("BANANASTAND_HOST", raising=False)


def printed_key(server: ServerProcess) -> str:
    found = KEY.search(server.log())
    assert found is not None, server.log()
    return found.group(0)


def create(server: ServerProcess, key: str, url: str) -> dict[str, object]:
    answer: dict[str, object] = httpx.post(
        f"{server.base_url}/api/v1/jobs/createTask",
        json={**prompt_body(), "callBackUrl": url},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ).json()
    return answer


def test_allow_loopback_says_so_and_a_local_receiver_gets_its_callback(
    spawn: Spawn, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers()
    server = spawn("serve", "--allow-loopback")
    assert (
        "callbacks and image_input may reach this machine (127.0.0.0/8, ::1): "
        f"{SETTING}, set by make run"
    ) in server.log()
    answer = create(server, printed_key(server), receiver.url)
    assert answer["code"] == 200, answer
    (got,) = receiver.wait_for(1)
    assert got.path == "/hook"
    assert b'"state":"success"' in got.body


def test_plain_serve_refuses_a_loopback_callback_and_names_the_setting(spawn: Spawn) -> None:
    server = spawn("serve")
    assert "may reach" not in server.log()
    answer = create(server, printed_key(server), "http://127.0.0.1:9/hook")
    assert answer["code"] == 422
    assert answer["msg"] == (
        "callBackUrl: 127.0.0.1 is not a publicly routable address "
        f"(the server setting {SETTING} can allow it)"
    )


def test_a_name_resolving_to_loopback_is_refused_at_delivery_naming_the_setting(
    start_server: Callable[..., Server], receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers()
    server = start_server(webhook_retry_schedule_seconds=[0.0])  # no allow-list
    key = server.key()
    task_id = create_with_callback(server, key, f"http://localhost:{receiver.port}/hook")
    (attempt,) = wait_info(server, key, task_id, gave_up)["attempts"]
    assert "not publicly routable" in attempt["error"]
    assert SETTING in attempt["error"]
    assert receiver.requests == []


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "LOCALHOST.", "::1"])
def test_allow_loopback_opens_this_machine_on_a_loopback_bind(host: str) -> None:
    settings = Settings(host=host).allowing_loopback()
    assert settings.allow_private_networks == ["127.0.0.0/8", "::1"]
    assert settings.host == host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.com"])
def test_allow_loopback_does_nothing_on_another_bind(host: str) -> None:
    settings = Settings(host=host)
    assert settings.allowing_loopback() is settings
    assert settings.allow_private_networks == []


def test_allow_loopback_keeps_what_the_operator_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SETTING, "10.0.0.0/8")
    assert Settings().allowing_loopback().allow_private_networks == ["10.0.0.0/8"]
    monkeypatch.setenv(SETTING, "")  # set, to nothing: nothing private, loopback included
    assert Settings().allowing_loopback().allow_private_networks == []

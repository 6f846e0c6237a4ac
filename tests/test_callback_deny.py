"""Acceptance: BANANASTAND_CALLBACK_DENY_HOSTS: tasks whose callBackUrl names a denied host are
accepted,
and the host is never called (no connection, no name lookup); the callback ends `refused`.

The receiver runs on loopback under host names that a test resolver maps to 127.0.0.1
(allow-listed), so a callback that is not denied does arrive there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bananastand.addresses import HostList
from bananastand.settings import Settings
from conftest import Server, running_server
from receiver import Receiver
from test_webhooks import FAST, callback_info, create_with_callback, delivered, wait_info
from test_webhooks import receivers as receivers  # the fixture

DENIED = "proxy.reseller.example"
ALLOWED = "hooks.example"


class Resolver:
    """Maps the test's names to 127.0.0.1 and remembers every name it was asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host in (DENIED, ALLOWED):
            return ["127.0.0.1"]
        raise OSError(f"unknown host {host}")


def refused(info: dict[str, Any]) -> bool:
    return bool(info["deliveryState"] == "refused")


def resend(server: Server, key: str, task_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = server.client.post(
        "/api/v1/jobs/callbacks/resend",
        json={"taskId": task_id},
        headers={"Authorization": f"Bearer {key}"},
    ).json()
    assert answer["code"] == 200, answer
    data: dict[str, Any] = answer["data"]
    return data


def test_host_list_matches_names_domains_and_addresses() -> None:
    hosts = HostList.parse(["Proxy.Example.", ".reseller.example", "10.1.2.3", "[::1]"])
    for host in (
        "proxy.example",
        "PROXY.EXAMPLE",
        "proxy.example.",
        "reseller.example",
        "a.b.Reseller.Example.",
        "10.1.2.3",
        "167838211",  # 10.1.2.3 as a resolver reads it
        "::ffff:10.1.2.3",
        "::1",
        "[::1]",
    ):
        assert hosts.matches(host), host
    for host in (
        "sub.proxy.example",  # an exact name covers only itself
        "notreseller.example",
        "reseller.example.org",
        "10.1.2.4",
        "example",
        "",
    ):
        assert not hosts.matches(host), host


@pytest.mark.parametrize("entry", ["*.reseller.example", "http://proxy.example/", "a/b", "."])
def test_malformed_deny_entries_are_refused_at_start(entry: str) -> None:
    with pytest.raises(ValidationError, match="callback_deny_hosts"):
        Settings(callback_deny_hosts=entry)  # type: ignore[arg-type]


def test_settings_read_the_comma_separated_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANANASTAND_CALLBACK_DENY_HOSTS", " proxy.example, .reseller.example ")
    assert Settings().callback_deny_hosts == ["proxy.example", ".reseller.example"]


def test_denied_host_is_never_called_and_the_callback_is_refused(
    start_server: Callable[..., Server], receivers: Callable[..., Receiver]
) -> None:
    resolver = Resolver()
    receiver = receivers()
    server = start_server(**FAST, callback_deny_hosts=[".Reseller.Example."], resolver=resolver)
    key = server.key()
    task_id = create_with_callback(server, key, f"http://{DENIED}:{receiver.port}/hook")
    info = wait_info(server, key, task_id, refused)
    (attempt,) = info["attempts"]
    assert attempt["success"] is False
    assert attempt["httpStatus"] is None
    assert "BANANASTAND_CALLBACK_DENY_HOSTS" in attempt["error"]
    assert DENIED in attempt["error"]
    assert info["nextAttemptTime"] is None
    assert info["deliveredTime"] is None

    # Resending changes nothing while the host is denied: no new attempt, still refused.
    again = resend(server, key, task_id)
    assert again["deliveryState"] == "refused"
    assert len(again["attempts"]) == 1

    # The same receiver under a name that is not denied does get its callback, so the
    # denied one was not lost on the way: it was never sent.
    other = create_with_callback(server, key, f"http://{ALLOWED}:{receiver.port}/hook")
    wait_info(server, key, other, delivered)
    assert [request.headers["webhook-id"] for request in receiver.wait_for(1)] == [
        callback_info(server, key, other)["webhookId"]
    ]
    assert callback_info(server, key, task_id) == again
    assert DENIED not in resolver.asked
    assert ALLOWED in resolver.asked


def test_a_literal_address_can_be_denied(
    start_server: Callable[..., Server], receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers()  # allow-listed by FAST, but denied
    server = start_server(**FAST, callback_deny_hosts=["127.0.0.1"])
    key = server.key()
    task_id = create_with_callback(server, key, receiver.url)
    info = wait_info(server, key, task_id, refused)
    assert "BANANASTAND_CALLBACK_DENY_HOSTS" in info["attempts"][0]["error"]
    assert receiver.requests == []


def test_refused_callback_is_sent_by_a_resend_once_the_host_is_no_longer_denied(
    tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers()
    data_dir = tmp_path / "data"
    url = f"http://{DENIED}:{receiver.port}/hook"
    with running_server(
        data_dir, **FAST, callback_deny_hosts=[DENIED], resolver=Resolver()
    ) as server:
        key = server.key()
        task_id = create_with_callback(server, key, url)
        wait_info(server, key, task_id, refused)
    with running_server(data_dir, **FAST, resolver=Resolver()) as server:
        assert callback_info(server, key, task_id)["deliveryState"] == "refused"
        resend(server, key, task_id)
        info = wait_info(server, key, task_id, delivered)
    assert [attempt["success"] for attempt in info["attempts"]] == [False, True]
    (got,) = receiver.wait_for(1)
    assert got.headers["webhook-id"] == info["webhookId"]

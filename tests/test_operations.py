"""Acceptance: operating a shared server: the admin API and its token, maintenance mode, model
switches (also flipped from the CLI while a server runs), and the admin CLI commands."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from accounts_helpers import ADMIN_TOKEN, admin, admin_ok, balance, new_account, switch_model
from conftest import Server, cli, prompt_body
from waiting import wait_for

KEY = re.compile(r"bs_(live|test)_[A-Za-z0-9]{32}")


@pytest.fixture
def operated(start_server: Callable[..., Server]) -> Server:
    return start_server(admin_token=ADMIN_TOKEN, live_provider="sandbox")


def test_the_admin_api_is_absent_without_a_token(server: Server) -> None:
    answer = server.client.get("/admin/accounts", headers={"Authorization": "Bearer x"}).json()
    assert answer["code"] == 404
    assert "BANANASTAND_ADMIN_TOKEN" in answer["msg"]


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", f"Bearer {ADMIN_TOKEN}x", f"Basic {ADMIN_TOKEN}"],
)
def test_the_admin_api_requires_the_admin_token(
    operated: Server, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = operated.client.get("/admin/accounts", headers=headers)
    assert response.status_code == 200
    assert response.json()["code"] == 401
    assert response.json()["data"] is None


def test_an_api_key_is_never_an_admin_token(operated: Server) -> None:
    key = operated.key(test=False)
    answer = operated.client.get("/admin/accounts", headers={"Authorization": f"Bearer {key}"})
    assert answer.json()["code"] == 401


def test_accounts_and_keys_through_the_admin_api(operated: Server) -> None:
    account_id, _ = new_account(operated, 50)
    made = admin_ok(
        operated,
        "POST",
        f"/admin/accounts/{account_id}/keys",
        {"name": "ci", "test": True, "expiresAt": int(time.time() * 1000) + 3_600_000},
    )
    assert KEY.fullmatch(made["secret"])
    assert made["kind"] == "test"
    shown = admin_ok(operated, "GET", f"/admin/accounts/{account_id}")
    assert shown["credits"] == 50
    assert [key["name"] for key in shown["keys"]] == ["", "ci"]
    assert shown["keys"][1]["expiresAt"] == made["expiresAt"]
    assert account_id in [a["id"] for a in admin_ok(operated, "GET", "/admin/accounts")]
    admin_ok(operated, "POST", f"/admin/keys/{made['id']}/revoke")
    revoked = operated.record(made["secret"], "task_x")
    assert revoked["code"] == 401
    assert admin(operated, "GET", "/admin/accounts/acct_nope")["code"] == 404
    assert admin(operated, "POST", f"/admin/accounts/{account_id}/credits", {})["code"] == 422


def test_maintenance_refuses_new_tasks_while_reads_and_running_tasks_go_on(
    operated: Server,
) -> None:
    key = operated.key()
    running = operated.create(key, prompt_body("slow [sandbox:delay=700]"))["data"]["taskId"]
    admin_ok(operated, "POST", "/admin/maintenance", {"on": True, "message": "upgrading, 5 min"})
    refused = operated.create(key, prompt_body())
    assert refused["code"] == 455
    assert refused["msg"] == "upgrading, 5 min"
    assert operated.record(key, running)["code"] == 200
    assert operated.wait(key, running)["state"] == "success"
    state = admin_ok(operated, "POST", "/admin/maintenance", {"on": False})
    assert state["maintenance"] is False
    assert operated.create(key, prompt_body())["code"] == 200


def test_a_disabled_model_answers_505_for_everyone_or_one_account(operated: Server) -> None:
    account_a, key_a = new_account(operated, test=True)
    _, key_b = new_account(operated, test=True)
    switch_model(operated, "nano-banana-pro", enabled=False)
    refused = operated.create(key_a, prompt_body())
    assert refused["code"] == 505
    assert "nano-banana-pro" in refused["msg"]
    switch_model(operated, "nano-banana-pro", enabled=True)
    switch_model(operated, "nano-banana-pro", enabled=False, account_id=account_a)
    assert operated.create(key_a, prompt_body())["code"] == 505
    assert operated.create(key_b, prompt_body())["code"] == 200
    switches = admin_ok(operated, "GET", "/admin/switches")
    assert switches["disabledModels"] == [{"model": "nano-banana-pro", "accountId": account_a}]


def _poll_code(server: Server, key: str, wanted: int) -> dict[str, Any]:
    """Poll createTask until it answers ``wanted``; switches travel within ~1 s."""
    return wait_for(
        lambda: server.create(key, prompt_body()),
        lambda answer: answer["code"] == wanted,
        what=f"createTask answering {wanted}",
        interval=0.1,
    )


def test_a_cli_switch_reaches_a_running_server(start_server: Callable[..., Server]) -> None:
    server = start_server(switch_poll_seconds=1.0, run_worker=False)
    key = server.key()
    assert server.create(key, prompt_body())["code"] == 200
    turned = cli(server.data_dir, "maintenance", "on", "--message", "back at noon")
    assert turned.returncode == 0, turned.stderr
    answer = _poll_code(server, key, 455)
    assert answer["code"] == 455
    assert answer["msg"] == "back at noon"
    assert cli(server.data_dir, "maintenance", "off").returncode == 0
    assert _poll_code(server, key, 200)["code"] == 200
    assert cli(server.data_dir, "models", "disable", "nano-banana-pro").returncode == 0
    assert _poll_code(server, key, 505)["code"] == 505
    assert cli(server.data_dir, "models", "enable", "nano-banana-pro").returncode == 0
    assert _poll_code(server, key, 200)["code"] == 200


def test_admin_cli_commands(start_server: Callable[..., Server]) -> None:
    server = start_server(live_provider="sandbox")
    made = cli(server.data_dir, "accounts", "create", "--name", "team a")
    assert made.returncode == 0, made.stderr
    account_id = made.stdout.strip().splitlines()[-1]
    assert account_id.startswith("acct_")
    key_made = cli(server.data_dir, "keys", "create", "--account", account_id, "--expires", "30d")
    assert key_made.returncode == 0, key_made.stderr
    key = key_made.stdout.strip().splitlines()[-1]
    assert KEY.fullmatch(key)
    listed = cli(server.data_dir, "keys", "list", "--account", account_id).stdout
    assert "\tactive\t" in listed
    assert re.search(r"\t20\d\d-\d\d-\d\dT", listed)  # the expiry
    bad = cli(server.data_dir, "keys", "create", "--expires", "someday")
    assert bad.returncode != 0

    granted = cli(server.data_dir, "credits", "add", "36", "--key", key, "--note", "trial")
    assert granted.returncode == 0, granted.stderr
    assert granted.stdout.strip().splitlines()[-1] == "36"
    by_account = cli(server.data_dir, "credits", "add", "4", "--account", account_id)
    assert by_account.stdout.strip().splitlines()[-1] == "40"
    assert cli(server.data_dir, "credits", "add", "4").returncode != 0
    assert balance(server, key) == 40

    limited = cli(
        server.data_dir,
        "accounts",
        "set-limits",
        account_id,
        "--create-rate",
        "unlimited",
        "--max-waiting",
        "5",
    )
    assert limited.returncode == 0, limited.stderr
    assert json.loads(limited.stdout)["maxWaiting"] == 5
    reset = cli(server.data_dir, "accounts", "set-limits", account_id, "--max-waiting", "default")
    assert json.loads(reset.stdout)["maxWaiting"] is None
    wrong = cli(server.data_dir, "accounts", "set-limits", account_id, "--read-rate", "fast")
    assert wrong.returncode == 2
    assert "read_rate" in wrong.stderr

    shown = json.loads(cli(server.data_dir, "accounts", "show", account_id).stdout)
    assert shown["name"] == "team a"
    assert shown["createRate"] == "unlimited"
    assert [row["note"] for row in shown["ledger"]] == ["", "trial"]
    assert account_id in cli(server.data_dir, "accounts", "list").stdout


def test_serve_banner_says_when_billing_is_off(spawn: Callable[..., Any]) -> None:
    child = spawn("serve", env={"BANANASTAND_BILLING": "off"})
    assert "billing: off" in child.log()

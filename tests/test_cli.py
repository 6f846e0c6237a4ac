"""Acceptance: the ``bananastand`` command as scripts use it: real child processes, real data
folder."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ServerProcess, cli, prompt_body

Spawn = Callable[..., ServerProcess]

LIVE_KEY = re.compile(r"^bs_live_[A-Za-z0-9]{32}$")
TEST_KEY = re.compile(r"^bs_test_[A-Za-z0-9]{32}$")
ANY_KEY = re.compile(r"bs_(?:live|test)_[A-Za-z0-9]{32}")
KEY_LINE = re.compile(r"key id: (key_\w+)\s+account: (acct_\w+)\s+kind: (live|test)")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"  # the folder the ``spawn`` fixture gives every child


def create_key(data_dir: Path, *args: str) -> tuple[str, str, str]:
    """``keys create ARGS``: (key id, account id, key) from its output."""
    done = cli(data_dir, "keys", "create", *args)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    match = KEY_LINE.search(done.stdout)
    assert match is not None, done.stdout
    return match.group(1), match.group(2), lines[-1]


def api_code(base_url: str, key: str) -> int:
    """The envelope code createTask answers with this key (sandbox prompt)."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        answer: dict[str, Any] = client.post(
            "/api/v1/jobs/createTask",
            json=prompt_body(),
            headers={"Authorization": f"Bearer {key}"},
        ).json()
    code: int = answer["code"]
    return code


def test_keys_create_prints_a_live_key_alone_on_the_last_line(data_dir: Path, spawn: Spawn) -> None:
    done = cli(data_dir, "keys", "create")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert LIVE_KEY.match(lines[-1]), done.stdout
    match = KEY_LINE.search(done.stdout)
    assert match is not None
    assert match.group(3) == "live"
    # The secret is printed only as that last line, and never logged.
    assert done.stdout.count(lines[-1]) == 1
    assert lines[-1] not in done.stderr
    # It is a real key: a server on the same data folder knows it (no live provider
    # here, so createTask answers 505, not 401).
    server = spawn("serve")
    assert api_code(server.base_url, lines[-1]) == 505


def test_keys_create_test_key(data_dir: Path, spawn: Spawn) -> None:
    done = cli(data_dir, "keys", "create", "--test", "--name", "ci")
    assert done.returncode == 0, done.stderr
    key = done.stdout.splitlines()[-1]
    assert TEST_KEY.match(key), done.stdout
    assert "kind: test" in done.stdout
    server = spawn("serve")
    assert api_code(server.base_url, key) == 200


def test_keys_create_in_an_existing_account(data_dir: Path) -> None:
    first_id, account, _ = create_key(data_dir)
    second_id, second_account, second_key = create_key(data_dir, "--account", account, "--test")
    assert second_account == account
    assert second_id != first_id
    assert TEST_KEY.match(second_key)
    # A third, in an account of its own.
    third_id, third_account, _ = create_key(data_dir)
    assert third_account != account

    listed = cli(data_dir, "keys", "list", "--account", account)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert sorted(row[0] for row in rows) == sorted([first_id, second_id])
    assert {row[1] for row in rows} == {account}
    assert third_id not in listed.stdout


def test_keys_create_in_an_unknown_account_fails_cleanly(data_dir: Path) -> None:
    create_key(data_dir)  # the database exists and has an account, just not this one
    done = cli(data_dir, "keys", "create", "--account", "acct_doesnotexist00")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "acct_doesnotexist00" in output
    assert "does not exist" in output
    assert not ANY_KEY.search(done.stdout)  # no key was made or printed
    # A clear one-line error, not a Python traceback.
    assert "Traceback" not in output, output[-400:]


def test_keys_revoke_an_unknown_key_fails_cleanly(data_dir: Path) -> None:
    create_key(data_dir)
    done = cli(data_dir, "keys", "revoke", "key_doesnotexist000")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "key_doesnotexist000" in output
    assert "Traceback" not in output, output[-400:]


def test_keys_list_shows_every_key(data_dir: Path) -> None:
    ids = [create_key(data_dir)[0], create_key(data_dir, "--test", "--name", "mine")[0]]
    listed = cli(data_dir, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in listed.stdout.splitlines()}
    assert sorted(rows) == sorted(ids)
    assert rows[ids[0]][2:4] == ["live", "active"]
    assert rows[ids[1]][2:4] == ["test", "active"]
    assert rows[ids[1]][-1] == "mine"
    # Listings show a prefix, never the secret.
    assert not ANY_KEY.search(listed.stdout)


def test_keys_revoke_then_the_server_refuses_the_key(data_dir: Path, spawn: Spawn) -> None:
    key_id, _, key = create_key(data_dir, "--test")
    other_id, _, other = create_key(data_dir, "--test")
    server = spawn("serve", env={"BANANASTAND_KEY_CACHE_SECONDS": "0"})
    assert api_code(server.base_url, key) == 200

    done = cli(data_dir, "keys", "revoke", key_id)
    assert done.returncode == 0, done.stderr
    assert key_id in done.stdout

    assert api_code(server.base_url, key) == 401
    assert api_code(server.base_url, other) == 200  # only that key
    listed = cli(data_dir, "keys", "list").stdout
    statuses = {line.split("\t")[0]: line.split("\t")[3] for line in listed.splitlines()}
    assert statuses == {key_id: "revoked", other_id: "active"}


def first_start_key(server: ServerProcess) -> str:
    keys = set(ANY_KEY.findall(server.log()))
    assert len(keys) == 1, server.log()
    [key] = keys
    assert TEST_KEY.match(key)
    return key


def curl_lines(server: ServerProcess) -> dict[str, str]:
    lines = [line.strip() for line in server.log().splitlines() if line.strip().startswith("curl")]
    found = {name: line for line in lines for name in ("createTask", "recordInfo") if name in line}
    assert set(found) == {"createTask", "recordInfo"}, server.log()
    return found


def test_serve_first_start_prints_a_test_key_and_curl_lines(spawn: Spawn) -> None:
    server = spawn("serve")
    key = first_start_key(server)
    lines = curl_lines(server)
    for line in lines.values():
        assert key in line
        assert server.base_url in line
    # The key works.
    assert api_code(server.base_url, key) == 200


def test_serve_first_start_curl_lines_work(spawn: Spawn) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: cannot run the printed curl lines")
    server = spawn("serve")
    key = first_start_key(server)
    lines = curl_lines(server)

    made = subprocess.run(
        shlex.split(lines["createTask"]), capture_output=True, text=True, timeout=30, check=False
    )
    assert made.returncode == 0, made.stderr
    answer = json.loads(made.stdout)
    assert answer["code"] == 200, answer
    task_id = answer["data"]["taskId"]

    look = lines["recordInfo"].replace("TASK_ID", task_id)
    seen = subprocess.run(
        shlex.split(look), capture_output=True, text=True, timeout=30, check=False
    )
    assert seen.returncode == 0, seen.stderr
    record = json.loads(seen.stdout)
    assert record["code"] == 200, record
    assert record["data"]["taskId"] == task_id
    assert key not in record["data"]["param"]


def test_serve_second_start_makes_no_new_key(spawn: Spawn) -> None:
    first = spawn("serve")
    first_start_key(first)
    first.kill()

    second = spawn("serve")
    log = second.log()
    assert not ANY_KEY.search(log), log
    assert "curl" not in log
    assert "bananastand keys create" in log

"""Acceptance: every error of the ``bananastand`` command is one line and a documented exit status.

The real binary against real servers (an in-process bananastand, or a loopback HTTP
server answering what a proxy or a failing server would), real data folders. For each
case: the exit status of its kind (0 ok, 1 task failed, 2 usage, 3 auth/credits,
4 server/network), exactly one non-empty line on stderr, no traceback anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import update

from bananastand.store.tables import accounts
from conftest import BIN, Server, ServerProcess, cli, free_port, rows_of
from test_cli import create_key
from waiting import wait_for

Answer = Callable[..., str]

USAGE, TASK_FAILED, AUTH, SERVER = 2, 1, 3, 4
NOT_STARTED = 1  # serve, worker, migrate


def client(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command, with only the client's variables that the test sets."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("BANANASTAND_")}
    return subprocess.run(
        [str(BIN / "bananastand"), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_line(done: subprocess.CompletedProcess[str], status: int) -> str:
    """The error line, after checking the exit status and that it is the only one."""
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), lines
    assert done.returncode == status, (done.returncode, lines[0])
    return lines[0]


@pytest.fixture
def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture
def answering() -> Iterator[Answer]:
    """``answering(status, body, **headers)``: the URL of a loopback HTTP server that
    answers every request so (a failing server, a proxy in front of one)."""
    servers: list[ThreadingHTTPServer] = []

    def start(status: int, body: object, **headers: str) -> str:
        payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# -- usage: bad arguments, files, URLs ------------------------------------------------------


@pytest.mark.no_database
def test_a_missing_image_file(tmp_path: Path, closed_url: str) -> None:
    done = client(
        "generate", "a banana", "-i", str(tmp_path / "nope.png"), "--base-url", closed_url
    )
    assert "nope.png" in one_line(done, USAGE)


@pytest.mark.no_database
@pytest.mark.parametrize("url", ["notaurl", "ftp://x", "http://"])
def test_a_base_url_that_is_not_http(url: str) -> None:
    assert "not an http(s) URL" in one_line(client("status", "task_x", "--base-url", url), USAGE)
    from_env = client("credits", BANANASTAND_BASE_URL=url)
    assert "BANANASTAND_BASE_URL" in one_line(from_env, USAGE)


def test_click_usage_errors_are_one_line_too(tmp_path: Path) -> None:
    assert "prompt" in one_line(client("generate"), USAGE)
    assert "nosuch" in one_line(client("nosuch"), USAGE)
    expiry = cli(tmp_path, "keys", "create", "--expires", "someday")
    assert "--expires" in one_line(expiry, USAGE)


@pytest.mark.no_database
def test_batch_files_that_cannot_be_used(tmp_path: Path, closed_url: str) -> None:
    out = tmp_path / "out"

    def batch(path: Path) -> str:
        return one_line(client("batch", str(path), "-o", str(out), "--base-url", closed_url), USAGE)

    assert "No such file" in batch(tmp_path / "missing.jsonl")
    not_json = tmp_path / "not-json.jsonl"
    not_json.write_text('{"prompt": "ok"}\nnot json\n')
    assert "line 2: not JSON" in batch(not_json)
    not_object = tmp_path / "not-object.jsonl"
    not_object.write_text('{"prompt": "ok"}\n\n["a list"]\n')
    assert "line 3: needs a JSON object" in batch(not_object)
    no_prompt = tmp_path / "no-prompt.jsonl"
    no_prompt.write_text('{"prompt": 7}\n')
    assert "line 1" in batch(no_prompt)
    # Refused before anything was sent or logged.
    assert not (out / "manifest.jsonl").exists()
    # An unreadable manifest (here: a folder where the file should be).
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "ok"}\n')
    (out / "manifest.jsonl").mkdir(parents=True)
    assert "manifest.jsonl" in batch(good)


# -- network: nothing listening -------------------------------------------------------------


@pytest.mark.no_database
def test_connection_refused(tmp_path: Path, closed_url: str) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a banana"}\n')
    for args in (
        ["status", "task_x"],
        ["credits"],
        ["generate", "a banana", "-o", str(tmp_path / "g")],
        ["batch", str(prompts), "-o", str(tmp_path / "b")],
    ):
        line = one_line(client(*args, "--base-url", closed_url, "--api-key", "k"), SERVER)
        assert f"cannot reach {closed_url} (connection refused)" in line, line
        assert "BANANASTAND_BASE_URL" in line
    # The batch touched no line: a re-run against the right server starts afresh.
    assert not (tmp_path / "b" / "manifest.jsonl").exists()


# -- auth and credits: a real server --------------------------------------------------------


def test_a_bogus_or_revoked_key(server: Server) -> None:
    bogus = client(
        "status", "task_x", "--base-url", server.base_url, "--api-key", "bs_test_" + "x" * 32
    )
    assert "401" in one_line(bogus, AUTH)
    key_id, _, key = create_key(server.data_dir, "--test")
    assert cli(server.data_dir, "keys", "revoke", key_id).returncode == 0
    revoked = client("generate", "a banana", "--base-url", server.base_url, "--api-key", key)
    line = one_line(revoked, AUTH)
    assert "401" in line
    assert "BANANASTAND_API_KEY" in line
    missing = client("credits", "--base-url", server.base_url)
    assert "401" in one_line(missing, AUTH)


def test_a_live_key_without_credits(start_server: Callable[..., Server], tmp_path: Path) -> None:
    server = start_server(live_provider="sandbox")
    key = server.key(test=False)
    done = client(
        "generate", "a banana", "-o", str(tmp_path), "--base-url", server.base_url, "--api-key", key
    )
    assert "402" in one_line(done, AUTH)


# -- server: rate limits, switches, failures ------------------------------------------------


def test_rate_limited_beyond_what_a_person_waits(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = start_server(create_rate="1/minute")
    env = {"BANANASTAND_BASE_URL": server.base_url, "BANANASTAND_API_KEY": server.key()}
    first = client("generate", "a banana", "-o", str(tmp_path), **env)
    assert first.returncode == 0, first.stderr
    # Retry-After is about a minute: more than the CLI waits out, so it says so at once.
    line = one_line(client("generate", "another", "-o", str(tmp_path), **env), SERVER)
    assert "429" in line
    assert "try again in" in line


def test_a_model_switched_off(start_server: Callable[..., Server], tmp_path: Path) -> None:
    server = start_server(switch_poll_seconds=0)
    assert cli(server.data_dir, "models", "disable", "nano-banana-pro").returncode == 0
    env = {"BANANASTAND_BASE_URL": server.base_url, "BANANASTAND_API_KEY": server.key()}
    assert "505" in one_line(client("generate", "a banana", "-o", str(tmp_path), **env), SERVER)


def test_a_failed_generation_is_status_1(server: Server, tmp_path: Path) -> None:
    env = {"BANANASTAND_BASE_URL": server.base_url, "BANANASTAND_API_KEY": server.key()}
    done = client("generate", "[sandbox:fail=safety]", "-o", str(tmp_path), **env)
    assert "(403)" in one_line(done, TASK_FAILED)


@pytest.mark.no_database
@pytest.mark.parametrize(
    ("status", "body", "shows"),
    [
        (200, {"code": 500, "msg": "boom", "data": None}, "500: boom"),
        (200, {"code": 455, "msg": "back at noon", "data": None}, "455: back at noon"),
        (502, "<html>Bad Gateway</html>", "HTTP 502"),
    ],
)
def test_server_failures(answering: Answer, status: int, body: object, shows: str) -> None:
    # Retry-After beyond the CLI's budget: the retries are the SDK's tests; here, the line.
    url = answering(status, body, Retry_After="3600")
    for args in (["status", "task_x"], ["generate", "a banana"]):
        line = one_line(client(*args, "--base-url", url, "--api-key", "k"), SERVER)
        assert shows in line, line


@pytest.mark.no_database
def test_not_a_bananastand_server(answering: Answer) -> None:
    url = answering(200, {"hello": "world"})
    line = one_line(client("status", "task_x", "--base-url", url), SERVER)
    assert "not an envelope" in line


# -- admin commands -------------------------------------------------------------------------


def test_admin_refusals_are_usage_errors(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    create_key(data_dir)
    for args, shows in (
        (["keys", "create", "--account", "acct_nope"], "acct_nope"),
        (["keys", "create", "--expires", "2001-01-01"], "expires"),
        (["keys", "revoke", "key_nope"], "key_nope"),
        (["accounts", "show", "acct_nope"], "acct_nope"),
        (["accounts", "set-limits", "acct_nope", "--max-waiting", "many"], "many"),
        (["accounts", "set-limits", "acct_nope", "--max-waiting", "5"], "acct_nope"),
        (["credits", "add", "5", "--account", "acct_nope"], "acct_nope"),
        (["credits", "add", "5"], "--account"),
        (["webhooks", "secret", "--account", "acct_nope"], "acct_nope"),
    ):
        assert shows in one_line(cli(data_dir, *args), USAGE), args


@pytest.mark.sqlite_only(reason="a corrupt SQLite file and a SQLite path that cannot be opened")
def test_databases_that_cannot_be_used(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "bananastand.db").write_bytes(b"this is not a database, " * 100)
    assert "not a database" in one_line(cli(corrupt, "keys", "list"), SERVER)
    nowhere = f"sqlite:///{tmp_path / 'missing' / 'x.db'}"
    line = one_line(cli(tmp_path / "d", "keys", "list", BANANASTAND_DATABASE_URL=nowhere), SERVER)
    assert "unable to open" in line
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert "BANANASTAND_DATA_DIR" in one_line(cli(a_file, "keys", "create"), USAGE)
    bad_setting = cli(tmp_path / "d", "keys", "list", BANANASTAND_KEY_CACHE_SECONDS="soon")
    assert "BANANASTAND_KEY_CACHE_SECONDS" in one_line(bad_setting, USAGE)
    # serve, worker and migrate that cannot start exit 1, whatever stopped them.
    for command in ("serve", "worker", "migrate"):
        assert "not a database" in one_line(cli(corrupt, command), NOT_STARTED), command
    line = one_line(cli(tmp_path / "d", "serve", BANANASTAND_DATABASE_URL=nowhere), NOT_STARTED)
    assert "unable to open" in line
    wrong = cli(tmp_path / "d", "serve", BANANASTAND_DATABASE_URL="mysql://db/x")
    assert "BANANASTAND_DATABASE_URL" in one_line(wrong, NOT_STARTED)


def test_a_disagreeing_audit_stays_1(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _, account, _ = create_key(data_dir)
    with rows_of(data_dir) as connection:
        connection.execute(
            update(accounts).where(accounts.c.id == account).values(credits=accounts.c.credits + 7)
        )
    done = cli(data_dir, "credits", "audit")
    assert account in done.stdout
    assert "do not match" in one_line(done, TASK_FAILED)


def test_a_server_that_goes_away_stops_the_batch(
    spawn: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = spawn("serve")
    key = create_key(tmp_path / "data", "--test")[2]  # the folder ``spawn`` serves
    lines = 30
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": f"banana {n} [sandbox:delay=5000]"}) + "\n" for n in range(lines)
        )
    )
    out = tmp_path / "out"
    env = {"BANANASTAND_BASE_URL": server.base_url, "BANANASTAND_API_KEY": key}
    base = {k: v for k, v in os.environ.items() if not k.startswith("BANANASTAND_")}
    batch = subprocess.Popen(
        [str(BIN / "bananastand"), "batch", str(prompts), "-o", str(out), "--concurrency", "2"],
        env={**base, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    manifest = out / "manifest.jsonl"

    def submitted() -> bool:
        assert batch.poll() is None, batch.communicate()
        return manifest.exists() and '"submitted"' in manifest.read_text()

    wait_for(submitted, what="a line was submitted")
    server.kill()
    _, stderr = batch.communicate(timeout=120)
    assert batch.returncode == SERVER, stderr
    assert "Traceback" not in stderr
    assert f"cannot reach {server.base_url} (connection refused)" in stderr
    # It stopped: the lines after those in flight were never started.
    touched = {json.loads(entry)["line"] for entry in manifest.read_text().splitlines()}
    assert len(touched) < lines // 2, touched

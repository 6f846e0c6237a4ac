"""Acceptance: the client commands of ``bananastand`` as child processes against a real server."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from accounts_helpers import ADMIN_TOKEN, new_account
from conftest import BIN, Server
from test_client_sdk import png, tasks_on
from waiting import wait_for


def client_env(server: Server, key: str) -> dict[str, str]:
    return {**os.environ, "BANANASTAND_BASE_URL": server.base_url, "BANANASTAND_API_KEY": key}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "bananastand"), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_help_lists_the_client_commands() -> None:
    done = run(dict(os.environ), "--help")
    for command in ("generate", "batch", "status", "credits", "serve"):
        assert command in done.stdout


def test_generate_saves_only_the_images_and_prints_their_paths(
    server: Server, tmp_path: Path
) -> None:
    ref = tmp_path / "ref.png"
    ref.write_bytes(png())
    out = tmp_path / "out"
    env = client_env(server, server.key())
    done = run(
        env, "generate", "a banana", "-i", str(ref), "--aspect", "16:9",
        "--resolution", "2K", "--format", "jpg", "-o", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [printed] = done.stdout.split()
    assert [p.name for p in out.iterdir()] == [Path(printed).name]
    assert Image.open(io.BytesIO(Path(printed).read_bytes())).size == (2752, 1536)
    as_json = run(env, "generate", "again", "-o", str(tmp_path / "j"), "--json")
    record = json.loads(as_json.stdout)
    assert record["state"] == "success"
    assert [p.suffix for p in (tmp_path / "j").iterdir()] == [".png"]
    status = run(env, "status", record["taskId"])
    assert json.loads(status.stdout)["taskId"] == record["taskId"]


def test_errors_are_one_line_with_the_status_of_their_kind(server: Server, tmp_path: Path) -> None:
    env = client_env(server, "bs_test_wrong")
    done = run(env, "generate", "a banana", "-o", str(tmp_path))
    assert done.returncode == 3
    assert "error: 401" in done.stderr
    failed = run(client_env(server, server.key()), "generate", "[sandbox:fail=safety]")
    assert failed.returncode == 1
    assert "(403)" in failed.stderr


def test_credits_and_options_instead_of_env(start_server: Callable[..., Server]) -> None:
    server = start_server(admin_token=ADMIN_TOKEN)
    _, key = new_account(server, credits=55)
    done = run(dict(os.environ), "credits", "--base-url", server.base_url, "--api-key", key)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "55"


def test_batch_lists_failures_and_exits_non_zero(server: Server, tmp_path: Path) -> None:
    (tmp_path / "ref.png").write_bytes(png("blue"))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "ok", "image_input": ["ref.png"], "output_format": "webp"})
        + "\n"
        + json.dumps({"prompt": "[sandbox:fail=safety]"})
        + "\n"
    )
    out = tmp_path / "out"
    done = run(client_env(server, server.key()), "batch", str(prompts), "-o", str(out))
    assert done.returncode == 1
    assert "line 2:" in done.stderr
    assert [p.name for p in out.glob("0*")] == ["00001.webp"]
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {entry["status"] for entry in entries if entry["line"] == 1} == {
        "sending",
        "submitted",
        "success",
    }


def test_batch_resumes_after_being_killed_and_makes_one_task_per_line(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = start_server(worker_concurrency=4)
    key = server.key()
    env = client_env(server, key)
    # 4 at a time, 0.6 s each: ~7 lines a second, so three runs killed within 1.2 s of
    # their first write cannot finish all 40. Each is killed only once it has written (it
    # starts in ~0.3 s, seconds on a busy machine), so that every run is interrupted
    # mid-batch, never before it began.
    lines = 40
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": f"banana {n} [sandbox:delay=600]"}) + "\n" for n in range(lines)
        )
    )
    out = tmp_path / "out"
    command = [
        str(BIN / "bananastand"),
        "batch",
        str(prompts),
        "-o",
        str(out),
        "--concurrency",
        "4",
    ]
    chance = random.Random(7)
    manifest_path = out / "manifest.jsonl"
    for _ in range(3):
        written = manifest_path.stat().st_size if manifest_path.exists() else 0
        child = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(
            lambda written=written: (
                manifest_path.exists() and manifest_path.stat().st_size > written
            ),
            what="the run wrote a line",
            interval=0.02,
        )
        time.sleep(chance.uniform(0.2, 1.2))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert len(tasks_on(server, key)) <= lines
    manifest = manifest_path.read_text().splitlines()
    done_lines = {json.loads(e)["line"] for e in manifest[:-1] if '"success"' in e}
    assert len(done_lines) < lines, "the kills should have interrupted the batch"
    finished = run(env, "batch", str(prompts), "-o", str(out), "--resubmit-unknown")
    assert finished.returncode == 0, finished.stderr
    assert len(tasks_on(server, key)) == lines
    assert len(list(out.glob("0*.png"))) == lines
    again = run(env, "batch", str(prompts), "-o", str(out))
    assert again.returncode == 0
    assert len(tasks_on(server, key)) == lines

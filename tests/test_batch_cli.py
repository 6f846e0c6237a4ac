"""Acceptance: ``bananastand batch`` as a child process against a real server: retrying
failed lines, one run per output folder, and its progress bar.

Runs are held mid-batch without sleeps: a server started without a worker takes the tasks
and leaves them waiting, so a run has its jobs in flight for as long as a test needs; a
second server on the same database then runs the worker, and the held run finishes.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import BIN, Server
from test_client_cli import client_env, run
from test_client_sdk import png, tasks_on
from waiting import wait_for

#: PNG's signature and nothing after it: an upload takes it (it looks like a PNG), the
#: task that reads it fails (400, not a decodable image).
BROKEN_PNG = b"\x89PNG\r\n\x1a\n" + b"cut off here"
#: Rich as on a terminal (cursor moves and all) although stderr is a file, wide enough
#: that the bar's numbers are never cut.
TERMINAL = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "TERM": "xterm", "COLUMNS": "200"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def entries(out: Path) -> list[dict[str, Any]]:
    """The manifest's entries (a torn last line of a run being written is left out)."""
    found = []
    for line in (out / "manifest.jsonl").read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def statuses(out: Path, status: str) -> list[dict[str, Any]]:
    if not (out / "manifest.jsonl").exists():
        return []
    return [entry for entry in entries(out) if entry["status"] == status]


def write_lines(path: Path, *specs: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps(spec) + "\n" for spec in specs))
    return path


def start_batch(env: dict[str, str], prompts: Path, out: Path, *args: str) -> subprocess.Popen[str]:
    """The run in the background, its stderr in ``<out>-stderr.txt`` beside ``out``."""
    with (out.parent / f"{out.name}-stderr.txt").open("w") as stderr:
        return subprocess.Popen(
            [str(BIN / "bananastand"), "batch", str(prompts), "-o", str(out), *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )


def test_retry_failed_sends_exactly_the_failed_lines_again_with_new_keys(
    server: Server, tmp_path: Path
) -> None:
    key = server.key()
    env = client_env(server, key)
    ref = tmp_path / "ref.png"
    ref.write_bytes(BROKEN_PNG)
    prompts = write_lines(
        tmp_path / "prompts.jsonl",
        {"prompt": "fine"},
        {"prompt": "with a reference", "image_input": ["ref.png"]},
        {"prompt": "the same reference", "image_input": ["ref.png"]},
    )
    out = tmp_path / "out"
    first = run(env, "batch", str(prompts), "-o", str(out))
    assert first.returncode == 1
    assert "1 succeeded, 2 failed, 0 unknown" in first.stderr
    assert "line 2: task" in first.stderr
    assert "failed (400): image_input[0]: not a decodable image" in first.stderr
    assert len(tasks_on(server, key)) == 3

    ref.write_bytes(png("green"))  # the reference fixed; the batch file is the same
    without_flag = run(env, "batch", str(prompts), "-o", str(out))
    assert without_flag.returncode == 1
    assert "1 succeeded, 2 failed, 0 unknown" in without_flag.stderr
    assert len(tasks_on(server, key)) == 3

    retried = run(env, "batch", str(prompts), "-o", str(out), "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    assert "3 succeeded, 0 failed, 0 unknown" in retried.stderr
    # Two new tasks: the first attempt's key would have answered with the failed task.
    tasks = tasks_on(server, key)
    assert len(tasks) == 5
    assert sorted(task["state"] for task in tasks) == ["fail", "fail"] + ["success"] * 3
    keys = {(e["line"], e.get("attempt")): e["idempotencyKey"] for e in statuses(out, "sending")}
    assert sorted(keys) == [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2)]
    for line in (2, 3):
        assert keys[(line, 2)] == keys[(line, 1)] + "-retry1"
    # The history stays: each failed line's first attempt and its fail, then the retry.
    for line in (2, 3):
        history = [(e["attempt"], e["status"]) for e in entries(out) if e["line"] == line]
        assert history == [
            (1, "sending"),
            (1, "submitted"),
            (1, "fail"),
            (2, "sending"),
            (2, "submitted"),
            (2, "success"),
        ]
    assert sorted(p.name for p in out.glob("0*")) == ["00001.png", "00002.png", "00003.png"]

    again = run(env, "batch", str(prompts), "-o", str(out), "--retry-failed")
    assert again.returncode == 0, again.stderr
    assert "3 succeeded, 0 failed, 0 unknown" in again.stderr
    assert len(tasks_on(server, key)) == 5


def test_each_retry_of_a_line_that_keeps_failing_is_a_new_attempt(
    server: Server, tmp_path: Path
) -> None:
    key = server.key()
    env = client_env(server, key)
    prompts = write_lines(tmp_path / "prompts.jsonl", {"prompt": "[sandbox:fail=safety]"})
    out = tmp_path / "out"
    for _ in range(3):
        done = run(env, "batch", str(prompts), "-o", str(out), "--retry-failed")
        assert done.returncode == 1
        assert "0 succeeded, 1 failed, 0 unknown" in done.stderr
    fails = statuses(out, "fail")
    assert [entry["attempt"] for entry in fails] == [1, 2, 3]
    assert len({entry["taskId"] for entry in fails}) == 3
    assert {task["taskId"] for task in tasks_on(server, key)} == {e["taskId"] for e in fails}
    base = statuses(out, "sending")[0]["idempotencyKey"]
    assert [entry["idempotencyKey"] for entry in statuses(out, "sending")] == [
        base,
        base + "-retry1",
        base + "-retry2",
    ]


def test_a_second_batch_on_a_folder_in_use_is_refused_at_once(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    api = start_server(run_worker=False)
    key = api.key()
    env = client_env(api, key)
    lines = 20
    prompts = write_lines(tmp_path / "prompts.jsonl", *({"prompt": f"n{n}"} for n in range(lines)))
    out = tmp_path / "out"
    first = start_batch(env, prompts, out, "--concurrency", "4")
    try:
        wait_for(lambda: len(statuses(out, "submitted")) == 4, what="4 tasks submitted")
        manifest = (out / "manifest.jsonl").read_bytes()

        second = run(env, "batch", str(prompts), "-o", str(out), "--concurrency", "4")
        assert second.returncode == 2
        [message] = second.stderr.splitlines()
        assert message.startswith("error: ")
        assert f"(pid {first.pid} on {socket.gethostname()}, started " in message
        assert (out / "manifest.jsonl").read_bytes() == manifest
        assert len(tasks_on(api, key)) == 4
        assert first.poll() is None

        start_server(data_dir=api.data_dir)  # a worker: the held tasks run
        assert first.wait(timeout=120) == 0
    finally:
        first.kill()
        first.wait()
    stderr = (tmp_path / "out-stderr.txt").read_text()
    assert f"{lines} succeeded, 0 failed, 0 unknown" in stderr
    assert sorted(entry["line"] for entry in statuses(out, "success")) == list(range(1, lines + 1))
    assert len(tasks_on(api, key)) == lines
    assert len(list(out.glob("0*.png"))) == lines


def test_a_killed_batch_does_not_hold_its_folder(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    api = start_server(run_worker=False)
    key = api.key()
    env = client_env(api, key)
    prompts = write_lines(tmp_path / "prompts.jsonl", *({"prompt": f"n{n}"} for n in range(6)))
    out = tmp_path / "out"
    killed = start_batch(env, prompts, out, "--concurrency", "2")
    wait_for(lambda: len(statuses(out, "submitted")) == 2, what="2 tasks submitted")
    killed.kill()
    killed.wait()
    # What it wrote in the lock file is still there, naming a process that is gone.
    assert json.loads((out / ".batch.lock").read_text())["pid"] == killed.pid

    start_server(data_dir=api.data_dir)
    done = run(env, "batch", str(prompts), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "6 succeeded, 0 failed, 0 unknown" in done.stderr
    assert len(tasks_on(api, key)) == 6
    assert json.loads((out / ".batch.lock").read_text())["pid"] != killed.pid


def test_the_progress_bar_counts_done_failed_and_running_lines(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    api = start_server(run_worker=False)
    env = {**client_env(api, api.key()), **TERMINAL}
    prompts = write_lines(
        tmp_path / "prompts.jsonl",
        {"prompt": "one"},
        {"prompt": "[sandbox:fail=safety]"},
        {"prompt": "three"},
        {"prompt": "four"},
    )
    out = tmp_path / "out"
    child = start_batch(env, prompts, out, "--concurrency", "4")
    stderr = tmp_path / "out-stderr.txt"
    try:
        # Held: all four in flight, none ended, for as long as it takes rich to draw it.
        wait_for(
            lambda: "done 0  failed 0  unknown 0  running 4" in ANSI.sub("", stderr.read_text()),
            what="drawn with 4 running",
        )
        start_server(data_dir=api.data_dir)
        assert child.wait(timeout=120) == 1
    finally:
        child.kill()
        child.wait()
    drawn = stderr.read_text()
    assert "\x1b[" in drawn, "drawn as on a terminal"
    shown = ANSI.sub("", drawn).splitlines()
    # The bar as it was left on the screen, then the failed line and the summary.
    bars = [line for line in shown if line.startswith("batch ")]
    assert "4/4 done 3  failed 1  unknown 0  running 0" in bars[-1]
    assert shown[-1].startswith("3 succeeded, 1 failed, 0 unknown; manifest: ")

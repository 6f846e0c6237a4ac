"""Unit: folding ``bananastand batch``'s manifest over attempts, and the output folder's lock."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bananastand.client.manifest import LOCK, FolderBusyError, FolderLock, fold


def write(path: Path, *entries: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps({"batch": "b", **entry}) + "\n" for entry in entries))
    return path


def test_a_later_attempt_starts_its_line_over(tmp_path: Path) -> None:
    manifest = write(
        tmp_path / "manifest.jsonl",
        # Written before attempts existed: attempt 1.
        {"line": 1, "status": "sending", "idempotencyKey": "k", "body": {}},
        {"line": 1, "status": "submitted", "taskId": "task_1"},
        {"line": 1, "status": "fail", "taskId": "task_1", "failCode": "403", "failMsg": "no"},
        {"line": 1, "attempt": 2, "status": "sending", "idempotencyKey": "k-retry1", "body": {}},
        {"line": 2, "attempt": 1, "status": "success", "taskId": "task_2", "files": ["f"]},
    )
    state = fold(manifest, "b")
    # Killed after the retry's send: nothing of the failed task is left to resume.
    assert state[1]["status"] == "sending"
    assert state[1]["attempt"] == 2
    assert {"taskId", "failCode", "failMsg"}.isdisjoint(state[1])
    assert state[2]["files"] == ["f"]


def test_an_earlier_attempt_after_a_later_one_changes_nothing(tmp_path: Path) -> None:
    manifest = write(
        tmp_path / "manifest.jsonl",
        {"line": 1, "attempt": 2, "status": "submitted", "taskId": "task_2"},
        {"line": 1, "attempt": 1, "status": "fail", "taskId": "task_1"},
    )
    assert fold(manifest, "b")[1]["taskId"] == "task_2"


def test_the_folder_is_held_until_released(tmp_path: Path) -> None:
    (tmp_path / LOCK).write_text("left by a killed run, not JSON")
    held = FolderLock.take(tmp_path)
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    # flock belongs to an open file: a second open is refused, in this process too.
    with pytest.raises(FolderBusyError, match=f"in use by another batch \\(pid {os.getpid()} on "):
        FolderLock.take(tmp_path)
    held.release()
    FolderLock.take(tmp_path).release()

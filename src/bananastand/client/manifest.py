"""What ``bananastand batch`` keeps in its output folder: the manifest and the run lock.

``manifest.jsonl`` is append-only: a line's history stays in it, and folding it gives each
line's state. A line can be tried more than once (``--retry-failed``); each try is an
*attempt*, numbered in every entry, and the first entry of a later attempt starts the
line over, so nothing of the failed task (its taskId, failCode, files) leaks into the new
one. Entries written before attempts existed have no number: they are attempt 1.

Two runs on one folder would each fold the manifest once and then do the same lines, twice
(one report: 30 ``success`` entries for 20 lines). ``.batch.lock`` keeps a second run out
for as long as the first one's process lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any

from bananastand.client.errors import BananastandError

MANIFEST = "manifest.jsonl"
LOCK = ".batch.lock"


class BatchFileError(BananastandError):
    """The batch file or its manifest cannot be read or used; nothing was sent."""


class FolderBusyError(BatchFileError):
    """Another ``batch`` holds the output folder; this one sent nothing and wrote nothing."""


def attempt_of(entry: dict[str, Any]) -> int:
    return int(entry.get("attempt", 1))


def apply(state: dict[int, dict[str, Any]], entry: dict[str, Any]) -> None:
    """Fold one entry into its line's state: the same attempt adds to it, a later attempt
    replaces it. An earlier attempt's entry after a later one could only come from two
    runs writing at once, which the lock prevents; it is ignored."""
    line: int = entry["line"]
    current = state.get(line)
    if current is None or attempt_of(entry) > attempt_of(current):
        state[line] = dict(entry)
    elif attempt_of(entry) == attempt_of(current):
        current.update(entry)


def fold(manifest: Path, identity: str) -> dict[int, dict[str, Any]]:
    """The last known state of each line of batch ``identity`` from its manifest.

    Lines that are not JSON are the torn last writes of killed runs (a torn multi-byte
    character included); a JSON entry of this batch without a line number is not ours.
    """
    state: dict[int, dict[str, Any]] = {}
    if not manifest.exists():
        return state
    raw = manifest.read_text(errors="replace")
    for number, entry_text in enumerate(raw.splitlines(), start=1):
        try:
            entry = json.loads(entry_text)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("batch") == identity:
            if not isinstance(entry.get("line"), int) or not isinstance(
                entry.get("attempt", 1), int
            ):
                raise BatchFileError(
                    f"{manifest} line {number}: not a manifest entry: "
                    "move the file away to start the batch over"
                )
            apply(state, entry)
    if raw and not raw.endswith("\n"):
        with manifest.open("a") as file:
            file.write("\n")
    return state


class FolderLock:
    """The output folder, held by this process until ``release`` or its end.

    ``flock`` is advisory and POSIX-only (this project runs on Linux and macOS): it keeps
    out other ``batch`` runs, which all take it, and nothing else. The kernel drops it when
    the process ends, however it ends (SIGKILL included), so a killed run never blocks the
    next one. The file's content - who holds it, or last held it - is only for the message
    of a refused run; the lock alone decides, so a killed run's stale content is harmless.
    The file is never deleted: a run that opened it just before the unlink would lock the
    deleted file while a third run locks a new one, and both would go ahead.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def take(cls, folder: Path) -> FolderLock:
        """Take the lock at once or raise ``FolderBusyError`` naming its holder."""
        path = folder / LOCK
        # Opened without truncating: the holder's content must survive a refused open.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderBusyError(
                f"{folder} is in use by another batch ({holder}): "
                "wait for it to end, or stop it, and run again"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode() + b"\n", 0)
        return cls(fd)

    def release(self) -> None:
        os.close(self._fd)  # closing the last descriptor of the file drops the lock


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says; a holder that has not written yet (it took
    the lock a moment ago) is said to be starting."""
    with contextlib.suppress(OSError, ValueError):
        holder = json.loads(os.pread(fd, 4096, 0))
        if isinstance(holder, dict):
            return (
                f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
            )
    return "one that is just starting"

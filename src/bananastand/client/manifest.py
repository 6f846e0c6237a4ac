"""What ``bananastand batch`` keeps in its output folder: the manifest.

``manifest.jsonl`` is append-only: a line's history stays in it, and folding it gives each
line's state. A line can be tried more than once (``--retry-failed``); each try is an
*attempt*, numbered in every entry, and the first entry of a later attempt starts the
line over, so nothing of the failed task (its taskId, failCode, files) leaks into the new
one. Entries written before attempts existed have no number: they are attempt 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bananastand.errors import BananastandError

MANIFEST = "manifest.jsonl"


class BatchFileError(BananastandError):
    """The batch file or its manifest cannot be read or used; nothing was sent."""


def attempt_of(entry: dict[str, Any]) -> int:
    return int(entry.get("attempt", 1))


def apply(state: dict[int, dict[str, Any]], entry: dict[str, Any]) -> None:
    """Fold one entry into its line's state: the same attempt adds to it, a later attempt
    replaces it. An earlier attempt's entry after a later one could only come from two
    runs writing at once; it is ignored."""
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

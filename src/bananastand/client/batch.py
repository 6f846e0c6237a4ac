"""``bananastand batch``: many tasks from a JSONL file, resumable after a crash.

Each line gets an ``Idempotency-Key`` derived from the batch file's identity (absolute
path and content) and the line number. ``manifest.jsonl`` in the output folder is an
append-only log of what happened to each line; a re-run folds it and does only what is left.

The one moment that cannot be made safe on every server is a createTask that was sent but
whose answer never came back (a crash, a dropped connection). The log is written ahead:
``sending`` (with the exact body and key) goes to disk *before* the request leaves, the
taskId after. A line left at ``sending`` - or marked ``unknown`` after a lost answer - is
not sent again unless ``--resubmit-unknown``: the hosted API ignores ``Idempotency-Key``,
so a second send could make (and charge) a second task there. bananastand honours the key,
so against it ``--resubmit-unknown`` is always safe: the same key and the very same body
(re-read from the log, not rebuilt, as upload links change) answer with the first task.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bananastand.client._core import create_body, is_url
from bananastand.client.client import AsyncClient
from bananastand.client.errors import BananastandError, ServerError, TransportError

MANIFEST = "manifest.jsonl"


@dataclass
class BatchReport:
    succeeded: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    unknown: list[tuple[int, str]] = field(default_factory=list)

    @property
    def problems(self) -> list[tuple[int, str]]:
        return sorted(self.failed + self.unknown)


@dataclass
class Batch:
    source: Path
    out: Path
    identity: str
    lines: dict[int, dict[str, Any]]
    state: dict[int, dict[str, Any]]
    resubmit_unknown: bool
    timeout: float
    _manifest: TextIO | None = field(default=None, init=False, repr=False)
    #: Set when the server could not be reached: the batch stops taking new lines.
    _unreachable: TransportError | None = field(default=None, init=False, repr=False)

    @classmethod
    def open(cls, source: Path, out: Path, *, resubmit_unknown: bool, timeout: float) -> Batch:
        """Read the batch file and fold its manifest; ``BatchFileError`` if either cannot be
        used. Every line is checked here, before anything is sent: a typo at line 900 is
        better found before 899 tasks have been made (and charged)."""
        try:
            content = source.read_bytes()
            text = content.decode()
        except OSError as exc:
            raise BatchFileError(f"{source}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise BatchFileError(f"{source}: not UTF-8 text") from None
        identity = hashlib.sha256(str(source.resolve()).encode() + b"\0" + content).hexdigest()[:24]
        lines = {
            number: _spec(line, f"{source} line {number}")
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip()
        }
        manifest = out / MANIFEST
        try:
            out.mkdir(parents=True, exist_ok=True)
            state = _fold(manifest, identity)
        except OSError as exc:
            raise BatchFileError(f"{exc.filename or manifest}: {exc.strerror or exc}") from None
        return cls(source, out, identity, lines, state, resubmit_unknown, timeout)

    @property
    def total(self) -> int:
        return len(self.lines)

    @property
    def already_done(self) -> int:
        return sum(1 for entry in self.state.values() if entry.get("status") == "success")

    def key(self, line: int) -> str:
        return f"batch-{self.identity}-{line}"

    def _log(self, line: int, **fields: Any) -> None:
        """Append one event; flushed before anything that depends on it happens (the file
        is line-buffered, so each event reaches the OS whole, and survives a killed run)."""
        entry = {"batch": self.identity, "line": line, "time": int(time.time() * 1000), **fields}
        self.state.setdefault(line, {}).update(entry)
        if self._manifest is None:
            self._manifest = (self.out / MANIFEST).open("a", buffering=1)
        self._manifest.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._manifest is not None:
            self._manifest.close()
            self._manifest = None

    async def run(
        self, client: AsyncClient, concurrency: int, on_done: Callable[[], None]
    ) -> BatchReport:
        report = BatchReport()
        pending = iter(sorted(self.lines))

        async def worker() -> None:
            for line in pending:
                if self._unreachable is not None:
                    return
                await self._job(client, line, report, on_done)

        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            self.close()
        if self._unreachable is not None:
            # Every other line would fail the same way; a re-run does what is left.
            raise self._unreachable
        return report

    async def _job(
        self, client: AsyncClient, line: int, report: BatchReport, on_done: Callable[[], None]
    ) -> None:
        entry = self.state.get(line, {})
        status = entry.get("status")
        if status == "success":
            report.succeeded += 1
            return
        try:
            outcome = await self._advance(client, line, entry)
        except (BananastandError, OSError) as exc:
            if isinstance(exc, TransportError) and exc.unreachable is not None:
                self._unreachable = exc  # the line stays as the manifest has it
                return
            self._log(line, status="error", error=str(exc))
            outcome = ("failed", str(exc))
        if outcome[0] == "success":
            report.succeeded += 1
        elif outcome[0] == "unknown":
            report.unknown.append((line, outcome[1]))
        else:
            report.failed.append((line, outcome[1]))
        on_done()

    async def _advance(
        self, client: AsyncClient, line: int, entry: dict[str, Any]
    ) -> tuple[str, str]:
        if entry.get("status") == "fail":
            return (
                "failed",
                f"task {entry['taskId']} failed ({entry['failCode']}): {entry['failMsg']}",
            )
        task_id = entry.get("taskId")
        if task_id is None:
            if entry.get("status") in ("sending", "unknown"):
                if not self.resubmit_unknown:
                    return "unknown", (
                        "createTask was sent but its answer was lost; "
                        "--resubmit-unknown sends it again"
                    )
                body = entry["body"]
            else:
                body = await self._body(client, line)
                self._log(line, status="sending", idempotencyKey=self.key(line), body=body)
            try:
                task_id = await client.create(
                    body, self.key(line), resend_lost=self.resubmit_unknown
                )
            except (ServerError, TransportError) as exc:
                # Even a refused connection proves nothing: an earlier attempt may have
                # arrived.
                self._log(line, status="unknown", error=str(exc))
                if isinstance(exc, TransportError) and exc.unreachable is not None:
                    raise
                return "unknown", f"createTask answer lost: {exc}"
            self._log(line, status="submitted", taskId=task_id)
            fresh = True
        else:
            fresh = False  # resumed: it may have ended long ago
        task = await client.wait(
            task_id, timeout=self.timeout, raise_on_fail=False, just_created=fresh
        )
        if task.state == "fail":
            self._log(
                line,
                status="fail",
                taskId=task_id,
                state="fail",
                failCode=task.failCode,
                failMsg=task.failMsg,
            )
            return "failed", f"task {task_id} failed ({task.failCode}): {task.failMsg}"
        result = await client.result(task)
        files = [str(path) for path in result.save(self.out, stem=f"{line:05d}")]
        self._log(line, status="success", taskId=task_id, state="success", files=files)
        return "success", ""

    async def _body(self, client: AsyncClient, line: int) -> dict[str, Any]:
        """createTask's body for a line; local image paths (relative to the batch file)
        are uploaded and replaced by their links."""
        spec = self.lines[line]
        fields = {k: v for k, v in spec.items() if k not in ("model", "callBackUrl")}
        images = fields.get("image_input") or []
        urls = []
        for image in images:
            if is_url(image):
                urls.append(image)
            else:
                path = Path(image)
                uploaded = await client.upload(
                    path if path.is_absolute() else self.source.parent / path
                )
                urls.append(uploaded.downloadUrl)
        if urls:
            fields["image_input"] = urls
        return create_body(fields, model=spec.get("model"), callback_url=spec.get("callBackUrl"))


class BatchFileError(BananastandError):
    """The batch file or its manifest cannot be read or used; nothing was sent."""


def _spec(text: str, where: str) -> dict[str, Any]:
    """One line of the batch file: a JSON object with a string prompt."""
    try:
        spec = json.loads(text)
    except ValueError as exc:
        raise BatchFileError(f"{where}: not JSON ({exc}): fix the line and run again") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("prompt"), str):
        raise BatchFileError(f'{where}: needs a JSON object with a string "prompt"')
    images = spec.get("image_input")
    if images is not None and not (
        isinstance(images, list) and all(isinstance(image, str) for image in images)
    ):
        raise BatchFileError(f"{where}: image_input must be a list of URLs or paths")
    return spec


def _fold(manifest: Path, identity: str) -> dict[int, dict[str, Any]]:
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
            if not isinstance(entry.get("line"), int):
                raise BatchFileError(
                    f"{manifest} line {number}: not a manifest entry: "
                    "move the file away to start the batch over"
                )
            state.setdefault(entry["line"], {}).update(entry)
    if raw and not raw.endswith("\n"):
        with manifest.open("a") as file:
            file.write("\n")
    return state

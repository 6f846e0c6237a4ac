"""``bananastand batch``: many tasks from a JSONL file, resumable after a crash.

Each line gets an ``Idempotency-Key`` derived from the batch file's identity (absolute
path and content) and the line number. ``manifest.jsonl`` in the output folder is an
append-only log of what happened to each line; a re-run folds it and does only what is left.
One run at a time: a second run on the same folder is refused before it sends or writes
anything (``client.manifest``).

The one moment that cannot be made safe on every server is a createTask that was sent but
whose answer never came back (a crash, a dropped connection). The log is written ahead:
``sending`` (with the exact body and key) goes to disk *before* the request leaves, the
taskId after. A line left at ``sending`` - or marked ``unknown`` after a lost answer - is
not sent again unless ``--resubmit-unknown``: the hosted API ignores ``Idempotency-Key``,
so a second send could make (and charge) a second task there. bananastand honours the key,
so against it ``--resubmit-unknown`` is always safe: the same key and the very same body
(re-read from the log, not rebuilt, as upload links change) answer with the first task.

A line whose task failed (``fail``: the server said so) stays failed unless
``--retry-failed``, since each retry is a new task, charged again. A retry is a new
attempt: a new key (``...-retry1``, ``-retry2``, ...; under the first one bananastand
would answer with the failed task), a new body (local images uploaded again: the user may
have fixed one), and the same ``sending``/``submitted`` steps. A line that ended in
``error`` made no task that failed - createTask was refused (a bad value, no credits) or a
local file could not be read, or the wait or download broke off - so every run tries it
again, without a flag: with the same key when no task was made, by waiting for its task
again when one was.
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

from bananastand.client.async_client import AsyncClient
from bananastand.client.errors import BananastandError, ServerError, TransportError
from bananastand.client.flows import create_body, is_url
from bananastand.client.manifest import (
    MANIFEST,
    BatchFileError,
    FolderLock,
    apply,
    attempt_of,
    fold,
)

_UNKNOWN = "createTask was sent but its answer was lost; --resubmit-unknown sends it again"


@dataclass
class BatchReport:
    """How the lines stand; the progress bar shows it as it changes."""

    succeeded: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    unknown: list[tuple[int, str]] = field(default_factory=list)
    #: Lines in flight right now.
    running: int = 0

    @property
    def problems(self) -> list[tuple[int, str]]:
        return sorted(self.failed + self.unknown)

    @property
    def settled(self) -> int:
        return self.succeeded + len(self.failed) + len(self.unknown)


@dataclass
class Batch:
    source: Path
    out: Path
    identity: str
    lines: dict[int, dict[str, Any]]
    state: dict[int, dict[str, Any]]
    resubmit_unknown: bool
    retry_failed: bool
    timeout: float
    _lock: FolderLock | None = field(repr=False)
    #: createTask's ``lane`` for every line (None: each line's own, if it has one).
    lane: str | None = None
    #: The lines whose outcome the manifest already tells, counted before any request.
    report: BatchReport = field(init=False)
    #: The lines this run works on, in order.
    todo: list[int] = field(init=False)
    _manifest: TextIO | None = field(default=None, init=False, repr=False)
    #: Set when the server could not be reached: the batch stops taking new lines.
    _unreachable: TransportError | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.report, self.todo = self._settled()

    @classmethod
    def open(
        cls,
        source: Path,
        out: Path,
        *,
        resubmit_unknown: bool,
        retry_failed: bool,
        timeout: float,
        lane: str | None = None,
    ) -> Batch:
        """Read the batch file, take the output folder and fold its manifest;
        ``BatchFileError`` if any of them cannot be used. Every line is checked here,
        before anything is sent: a typo at line 900 is better found before 899 tasks have
        been made (and charged). Close the batch (``with``) to let the folder go."""
        try:
            content = source.read_bytes()
            text = content.decode()
        except OSError as exc:
            raise BatchFileError(f"{source}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise BatchFileError(f"{source}: not UTF-8 text") from None
        # The lane is part of what a line asks for: the same file on another lane is
        # another batch (new Idempotency-Keys), not a replay the server would refuse.
        lane_part = f"\0lane={lane}".encode() if lane else b""
        identity = hashlib.sha256(
            str(source.resolve()).encode() + b"\0" + content + lane_part
        ).hexdigest()[:24]
        lines = {
            number: _spec(line, f"{source} line {number}")
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip()
        }
        manifest = out / MANIFEST
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock = FolderLock.take(out)  # before the fold, which may mend a torn last line
            try:
                state = fold(manifest, identity)
            except BaseException:
                lock.release()
                raise
        except OSError as exc:
            raise BatchFileError(f"{exc.filename or manifest}: {exc.strerror or exc}") from None
        return cls(
            source, out, identity, lines, state, resubmit_unknown, retry_failed, timeout, lock, lane
        )

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def total(self) -> int:
        return len(self.lines)

    def key(self, line: int, attempt: int) -> str:
        """The first attempt's key is the one manifests had before retries existed."""
        key = f"batch-{self.identity}-{line}"
        return key if attempt == 1 else f"{key}-retry{attempt - 1}"

    def _settled(self) -> tuple[BatchReport, list[int]]:
        """Lines whose outcome this run will not change, and the others. Counted up front
        so that they do not show as a burst of finished jobs in the progress bar's rate."""
        report, todo = BatchReport(), []
        for line in sorted(self.lines):
            entry = self.state.get(line, {})
            status = entry.get("status")
            if status == "success":
                report.succeeded += 1
            elif status == "fail" and not self.retry_failed:
                report.failed.append((line, _failure(entry)))
            elif status in ("sending", "unknown") and not self.resubmit_unknown:
                report.unknown.append((line, _UNKNOWN))
            else:
                todo.append(line)
        return report, todo

    def _log(self, line: int, attempt: int, **fields: Any) -> None:
        """Append one event; flushed before anything that depends on it happens (the file
        is line-buffered, so each event reaches the OS whole, and survives a killed run)."""
        entry = {
            "batch": self.identity,
            "line": line,
            "attempt": attempt,
            "time": int(time.time() * 1000),
            **fields,
        }
        apply(self.state, entry)
        if self._manifest is None:
            self._manifest = (self.out / MANIFEST).open("a", buffering=1)
        self._manifest.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._manifest is not None:
            self._manifest.close()
            self._manifest = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    async def run(
        self, client: AsyncClient, concurrency: int, on_change: Callable[[BatchReport], None]
    ) -> BatchReport:
        """Do the lines left (``todo``); ``on_change`` hears of each start and end."""
        pending = iter(self.todo)

        async def worker() -> None:
            for line in pending:
                if self._unreachable is not None:
                    return
                await self._job(client, line, on_change)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        if self._unreachable is not None:
            # Every other line would fail the same way; a re-run does what is left.
            raise self._unreachable
        return self.report

    async def _job(
        self, client: AsyncClient, line: int, on_change: Callable[[BatchReport], None]
    ) -> None:
        report = self.report
        entry = self.state.get(line, {})
        attempt = attempt_of(entry)
        if entry.get("status") == "fail":  # only with --retry-failed: else it is settled
            attempt, entry = attempt + 1, {}
        report.running += 1
        on_change(report)
        try:
            outcome = await self._advance(client, line, attempt, entry)
        except (BananastandError, OSError) as exc:
            if isinstance(exc, TransportError) and exc.unreachable is not None:
                self._unreachable = exc  # the line stays as the manifest has it
                outcome = ("left", "")
            else:
                self._log(line, attempt, status="error", error=str(exc))
                outcome = ("failed", str(exc))
        report.running -= 1
        kind, reason = outcome
        if kind == "success":
            report.succeeded += 1
        elif kind == "unknown":
            report.unknown.append((line, reason))
        elif kind == "failed":
            report.failed.append((line, reason))
        on_change(report)

    async def _advance(
        self, client: AsyncClient, line: int, attempt: int, entry: dict[str, Any]
    ) -> tuple[str, str]:
        task_id = entry.get("taskId")
        key = self.key(line, attempt)
        if task_id is None:
            if entry.get("status") in ("sending", "unknown"):  # with --resubmit-unknown
                body = entry["body"]
            else:
                body = await self._body(client, line)
                self._log(line, attempt, status="sending", idempotencyKey=key, body=body)
            try:
                task_id = await client.create(body, key, resend_lost=self.resubmit_unknown)
            except (ServerError, TransportError) as exc:
                # Even a refused connection proves nothing: an earlier attempt may have
                # arrived.
                self._log(line, attempt, status="unknown", error=str(exc))
                if isinstance(exc, TransportError) and exc.unreachable is not None:
                    raise
                return "unknown", f"createTask answer lost: {exc}"
            self._log(line, attempt, status="submitted", taskId=task_id)
            fresh = True
        else:
            fresh = False  # resumed: it may have ended long ago
        task = await client.wait(
            task_id, timeout=self.timeout, raise_on_fail=False, just_created=fresh
        )
        if task.state == "fail":
            failed = {"taskId": task_id, "failCode": task.failCode, "failMsg": task.failMsg}
            self._log(line, attempt, status="fail", state="fail", **failed)
            return "failed", _failure(failed)
        result = await client.result(task)
        files = [str(path) for path in result.save(self.out, stem=f"{line:05d}")]
        self._log(line, attempt, status="success", taskId=task_id, state="success", files=files)
        return "success", ""

    async def _body(self, client: AsyncClient, line: int) -> dict[str, Any]:
        """createTask's body for a line; local image paths (relative to the batch file)
        are uploaded and replaced by their links."""
        spec = self.lines[line]
        fields = {k: v for k, v in spec.items() if k not in ("model", "callBackUrl", "lane")}
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
        return create_body(
            fields,
            model=spec.get("model"),
            callback_url=spec.get("callBackUrl"),
            lane=self.lane or spec.get("lane"),
        )


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


def _failure(entry: dict[str, Any]) -> str:
    return f"task {entry['taskId']} failed ({entry['failCode']}): {entry['failMsg']}"

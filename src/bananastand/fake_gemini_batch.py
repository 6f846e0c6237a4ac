"""The Gemini Batch API and Files API of the fake Gemini server, in their real wire format.

What google-genai's ``client.aio.batches`` and ``client.aio.files`` send and read (REST,
``v1beta``, camelCase):

- ``POST /v1beta/models/{model}:batchGenerateContent`` with ``{"batch": {"displayName",
  "inputConfig": {"requests": {"requests": [{"request": GenerateContentRequest,
  "metadata"}]}} or {"fileName": "files/..."}}}``; answers the job as a long-running
  operation: ``{"name": "batches/ID", "metadata": {"@type", "model", "displayName",
  "state": "BATCH_STATE_PENDING", "createTime", "updateTime", "batchStats", "output"}}``.
- ``GET /v1beta/batches/ID``, ``GET /v1beta/batches?pageSize=&pageToken=`` (``operations``,
  ``nextPageToken``) and ``POST /v1beta/batches/ID:cancel``.
- The resumable upload: ``POST /upload/v1beta/files`` with ``X-Goog-Upload-Protocol:
  resumable`` and ``X-Goog-Upload-Command: start`` answers an ``X-Goog-Upload-URL``; chunks
  are POSTed there with ``X-Goog-Upload-Command: upload[, finalize]`` and
  ``X-Goog-Upload-Offset``, answered ``X-Goog-Upload-Status: active`` then ``final`` with
  ``{"file": {...}}``. ``GET /v1beta/files/NAME:download?alt=media`` gives a file's bytes.

A job stays where the test puts it (`FakeBatches.set_state`, `complete`, `fail`, `expire`),
unless ``complete_after_s`` is set (a demo's fake): then a job asked for that long after its
creation has completed;
completing it answers every request as ``generateContent`` would (scripted replies of the
fake included), so one scripted error fails just that request. A job's output is inline for
inline requests (``output.inlinedResponses.inlinedResponses``: ``{"response"}`` or
``{"error": {"code", "message"}}`` in the order of the requests) and a JSONL file for a
file of requests (``output.responsesFile``: one ``{"key", "response"|"error"}`` a line).
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["BatchAnswer", "FakeBatch", "FakeBatches"]

_CREATE_RE = re.compile(r"^/v1beta/models/([^/:]+):batchGenerateContent$")
_JOB_RE = re.compile(r"^/v1beta/batches/([^/:]+)$")
_CANCEL_RE = re.compile(r"^/v1beta/batches/([^/:]+):cancel$")
_DOWNLOAD_RE = re.compile(r"^/v1beta/files/([^/:]+):download$")
_FILE_RE = re.compile(r"^/v1beta/files/([^/:]+)$")
_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
#: The gRPC codes (``google.rpc.Status.code``) that a per-request error carries.
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 429: 8, 500: 13, 503: 14, 504: 4}
#: States a test may put a job in; the last four are final.
STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED")

#: What answers one generateContent body: (HTTP status, JSON body). The fake's own.
GenerateAnswer = Callable[[str, str, dict[str, Any]], tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class BatchAnswer:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json; charset=UTF-8"


@dataclass
class FakeBatch:
    """One job: its requests as sent (``key``: the request's metadata key or JSONL key)."""

    id: str
    model: str
    display_name: str
    api_key: str
    #: (key, GenerateContentRequest, metadata) in the order sent.
    requests: list[tuple[str, dict[str, Any], dict[str, Any]]]
    #: The input file's name when the requests came as a JSONL file.
    input_file: str | None = None
    state: str = "PENDING"
    created: str = field(default_factory=lambda: _timestamp())
    updated: str = field(default_factory=lambda: _timestamp())
    output: dict[str, Any] | None = None
    error: str = ""
    #: ``time.monotonic()`` at its creation.
    born: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return f"batches/{self.id}"

    def operation(self) -> dict[str, Any]:
        count = str(len(self.requests))
        metadata: dict[str, Any] = {
            "@type": _BATCH_TYPE,
            "model": f"models/{self.model}",
            "displayName": self.display_name,
            "state": f"BATCH_STATE_{self.state}",
            "createTime": self.created,
            "updateTime": self.updated,
            "batchStats": {"requestCount": count, "pendingRequestCount": count},
            "name": self.name,
        }
        answer: dict[str, Any] = {"name": self.name, "metadata": metadata}
        if self.output is not None:
            metadata["output"] = self.output
            metadata["endTime"] = self.updated
            answer["done"] = True
        if self.error:
            answer["done"] = True
            answer["error"] = {"code": 13, "message": self.error}
        return answer


@dataclass
class FakeBatches:
    """The jobs and files of one fake server; thread-safe (the server is threaded)."""

    generate: GenerateAnswer
    api_key: str
    #: The ``status`` word of an HTTP error code (``INVALID_ARGUMENT``), as the fake's own.
    status_names: Mapping[int, str]
    jobs: list[FakeBatch] = field(default_factory=list)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    #: Requests to ``batchGenerateContent``, refused ones included.
    create_calls: int = 0
    #: Seconds after which an open job completes when asked for (None: only when told).
    complete_after_s: float | None = None
    page_size: int = 50
    _uploads: dict[str, dict[str, Any]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    # -- what tests do ------------------------------------------------------------------

    def wait_for_jobs(self, count: int, timeout: float = 60.0) -> list[FakeBatch]:
        """Block until at least ``count`` jobs exist (a guard against hanging, not a timed
        assertion: the caller checks what it got)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.jobs) >= count, timeout)
            return list(self.jobs)

    def job(self, name: str) -> FakeBatch:
        with self._changed:
            return next(job for job in self.jobs if name in (job.name, job.id))

    def set_state(self, name: str, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}")
        with self._changed:
            job = self.job(name)
            job.state, job.updated = state, _timestamp()
            self._changed.notify_all()

    def complete(self, name: str) -> None:
        """Run every request of the job and make it SUCCEEDED with their answers."""
        job = self.job(name)
        answers = [(key, self._answer(job, request), meta) for key, request, meta in job.requests]
        with self._changed:
            if job.input_file is None:
                inlined = [
                    {**answer, **({"metadata": meta} if meta else {})}
                    for _, answer, meta in answers
                ]
                job.output = {"inlinedResponses": {"inlinedResponses": inlined}}
            else:
                lines = [json.dumps({"key": key, **answer}) for key, answer, _ in answers]
                output_name = f"files/batch-{job.id}-output"
                self.files[output_name] = ("application/jsonl", "\n".join(lines).encode() + b"\n")
                job.output = {"responsesFile": output_name}
        self.set_state(name, "SUCCEEDED")

    def fail(self, name: str, message: str = "the batch failed") -> None:
        with self._changed:
            self.job(name).error = message
        self.set_state(name, "FAILED")

    def expire(self, name: str) -> None:
        self.set_state(name, "EXPIRED")

    # -- the wire -----------------------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes, host: str
    ) -> BatchAnswer | None:
        """The answer to a request of the Batch or Files API, or None for any other route."""
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query)
        if path == "/upload/v1beta/files" and method == "POST":
            # The upload URL is the session's credential: its chunks come without the key.
            started = "upload_id" in query
            return (None if started else self._authorized(headers, query)) or self._upload(
                headers, query, body, host
            )
        routes: list[tuple[str, re.Pattern[str], Callable[..., BatchAnswer]]] = [
            ("POST", _CREATE_RE, lambda model: self._create(model, headers, body)),
            ("POST", _CANCEL_RE, self._cancel),
            ("GET", _JOB_RE, lambda job_id: _json(200, self._current(job_id).operation())),
            ("GET", _DOWNLOAD_RE, self._download),
            ("GET", _FILE_RE, self._file),
        ]
        if method == "GET" and path == "/v1beta/batches":
            return self._authorized(headers, query) or self._list(query)
        for route_method, pattern, answer in routes:
            match = pattern.match(path)
            if match is None or route_method != method:
                continue
            refused = self._authorized(headers, query)
            if refused is not None:
                return refused
            try:
                return answer(match.group(1))
            except StopIteration:
                return self._error(404, f"{path} not found")
        return None

    def _authorized(
        self, headers: Mapping[str, str], query: Mapping[str, list[str]]
    ) -> BatchAnswer | None:
        key = headers.get("x-goog-api-key") or query.get("key", [""])[0]
        if key == self.api_key:
            return None
        return self._error(400, "API key not valid. Please pass a valid API key.")

    def _create(self, model: str, headers: Mapping[str, str], raw: bytes) -> BatchAnswer:
        with self._changed:
            self.create_calls += 1
        try:
            batch = json.loads(raw)["batch"]
            source = batch["inputConfig"]
        except (ValueError, KeyError, TypeError):
            return self._error(400, "Invalid JSON payload: batch.inputConfig is required.")
        job_id = f"{next(self._ids)}{secrets.token_hex(6)}"
        requests: list[tuple[str, dict[str, Any], dict[str, Any]]]
        if "fileName" in source:
            found = self.files.get(source["fileName"])
            if found is None:
                return self._error(404, f"File {source['fileName']} not found.")
            try:
                lines = [json.loads(line) for line in found[1].splitlines() if line.strip()]
                requests = [(str(line["key"]), line["request"], {}) for line in lines]
            except (ValueError, KeyError, TypeError):
                return self._error(400, "The input file is not JSONL of {key, request} objects.")
        else:
            inlined = source.get("requests", {}).get("requests", [])
            requests = [
                (str(metadata.get("key", index)), item["request"], metadata)
                for index, item in enumerate(inlined)
                for metadata in [item.get("metadata") or {}]
            ]
        if not requests:
            return self._error(400, "A batch needs at least one request.")
        job = FakeBatch(
            id=job_id,
            model=model,
            display_name=batch.get("displayName", ""),
            api_key=headers.get("x-goog-api-key", ""),
            requests=requests,
            input_file=source.get("fileName"),
        )
        with self._changed:
            self.jobs.append(job)
            self._changed.notify_all()
        return _json(200, job.operation())

    def _current(self, job_id: str) -> FakeBatch:
        job = self.job(job_id)
        due = self.complete_after_s
        is_open = job.state in ("PENDING", "RUNNING")
        if due is not None and is_open and time.monotonic() - job.born >= due:
            self.complete(job.name)
        return job

    def _cancel(self, job_id: str) -> BatchAnswer:
        job = self.job(job_id)
        if job.state in ("PENDING", "RUNNING"):
            self.set_state(job_id, "CANCELLED")
        return _json(200, {})

    def _list(self, query: Mapping[str, list[str]]) -> BatchAnswer:
        size = int(query.get("pageSize", [str(self.page_size)])[0] or self.page_size)
        start = int(query.get("pageToken", ["0"])[0] or 0)
        with self._changed:
            # Newest first, as Google lists them.
            jobs = list(reversed(self.jobs))[start : start + size]
            more = start + size < len(self.jobs)
        answer: dict[str, Any] = {"operations": [job.operation() for job in jobs]}
        if more:
            answer["nextPageToken"] = str(start + size)
        return _json(200, answer)

    def _upload(
        self, headers: Mapping[str, str], query: Mapping[str, list[str]], body: bytes, host: str
    ) -> BatchAnswer:
        command = headers.get("x-goog-upload-command", "")
        if "upload_id" not in query:
            if headers.get("x-goog-upload-protocol") != "resumable" or command != "start":
                return self._error(400, "Only the resumable upload protocol is supported here.")
            meta = (json.loads(body or b"{}").get("file") or {}) if body else {}
            upload_id = f"up{next(self._ids)}"
            with self._changed:
                self._uploads[upload_id] = {
                    "meta": meta,
                    "size": int(headers.get("x-goog-upload-header-content-length", "0")),
                    "mime": headers.get("x-goog-upload-header-content-type", ""),
                    "data": bytearray(),
                }
            url = (
                f"http://{host}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"
            )
            return BatchAnswer(
                200, b"", {"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"}
            )
        upload = self._uploads.get(query["upload_id"][0])
        if upload is None:
            return self._error(404, "No such upload session.")
        if int(headers.get("x-goog-upload-offset", "-1")) != len(upload["data"]):
            return self._error(400, "X-Goog-Upload-Offset does not match the bytes received.")
        upload["data"].extend(body)
        if "finalize" not in command:
            return BatchAnswer(200, b"", {"X-Goog-Upload-Status": "active"})
        name = upload["meta"].get("name") or f"files/upload{next(self._ids)}"
        data = bytes(upload["data"])
        with self._changed:
            self.files[name] = (upload["mime"] or "application/octet-stream", data)
        file = {
            "name": name,
            "displayName": upload["meta"].get("displayName", ""),
            "mimeType": self.files[name][0],
            "sizeBytes": str(len(data)),
            "createTime": _timestamp(),
            "state": "ACTIVE",
            "source": "UPLOADED",
            "uri": f"http://{host}/v1beta/{name}",
        }
        body_out = json.dumps({"file": file}).encode()
        return BatchAnswer(200, body_out, {"X-Goog-Upload-Status": "final"})

    def _download(self, name: str) -> BatchAnswer:
        mime, data = self.files[f"files/{name}"]
        return BatchAnswer(200, data, content_type=mime)

    def _file(self, name: str) -> BatchAnswer:
        mime, data = self.files[f"files/{name}"]
        return _json(200, {"name": f"files/{name}", "mimeType": mime, "sizeBytes": str(len(data))})

    def _error(self, code: int, message: str) -> BatchAnswer:
        status = self.status_names.get(code, "UNKNOWN")
        return _json(code, {"error": {"code": code, "message": message, "status": status}})

    def _answer(self, job: FakeBatch, request: dict[str, Any]) -> dict[str, Any]:
        status, body = self.generate(job.model, job.api_key, request)
        if status == 200:
            return {"response": body}
        error = body.get("error", {})
        return {
            "error": {
                "code": _GRPC_CODES.get(status, 2),
                "message": error.get("message", f"status {status}"),
            }
        }


def _json(status: int, payload: Any) -> BatchAnswer:
    return BatchAnswer(status, json.dumps(payload).encode())


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

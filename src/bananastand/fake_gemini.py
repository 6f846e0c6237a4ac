"""A fake Gemini API on loopback, speaking the real REST wire format.

Tests, demos and the pipeline benchmark point the real ``google-genai`` SDK at it
(``HttpOptions(base_url=...)`` or ``GOOGLE_GEMINI_BASE_URL``), so nothing in the provider
is mocked: ``POST /v1beta/models/{model}:generateContent`` with ``x-goog-api-key``,
camelCase JSON, URL-safe base64 in, standard base64 out, thought parts before the final
image, safety answers as HTTP 200, errors as ``{"error": {"code", "status", "message"}}``.

Images are real and have the pixel size Google returns for the requested aspect ratio and
``imageSize`` (1K when none is sent; ``auto`` follows the first input image), unless
``answer_size`` fixes one size for every answer (a load test's small, cheap images). Tests script
outcomes with `FakeGemini.script`; a script is used up one reply per request, after which
the fake answers with success. Every request is kept in `FakeGemini.requests`, with the
time it came in. `FakeGemini.respond` is the whole of the API short of its transport, so a
benchmark can serve the same answers over another server (thousands of requests at once).

The Batch API and the Files API (`bananastand.fake_gemini_batch`) answer on the same
port: `FakeGemini.batches` holds their jobs and files, and answers each request of a job
with this fake's own generateContent.

Run it alone with ``bananastand fake-gemini --port 8089`` and start bananastand with
``GEMINI_API_KEY=fake GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:8089``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import io
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

from bananastand.contract import AspectRatio, Resolution, output_size
from bananastand.fake_gemini_batch import BatchAnswer, FakeBatches
from bananastand.imaging import nearest_aspect_ratio, shown_size

__all__ = ["FakeGemini", "Reply", "SeenRequest"]

_PATH_RE = re.compile(r"^/v1beta/models/([^/:]+):generateContent$")
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass(frozen=True)
class Reply:
    """One scripted answer. ``status`` other than 200 answers an error body; otherwise
    ``block_reason`` (promptFeedback) or ``finish_reason`` shape a 200 answer, and an
    image is included unless the finish reason says there is none."""

    status: int = 200
    message: str = ""
    block_reason: str | None = None
    finish_reason: str = "STOP"
    delay_s: float = 0.0
    with_image: bool = True
    #: A ``google.rpc.RetryInfo`` detail in an error answer (``"2s"``), as Google sends
    #: with 429 RESOURCE_EXHAUSTED.
    retry_delay: str = ""


@dataclass(frozen=True)
class SeenRequest:
    model: str
    api_key: str
    body: dict[str, Any]
    #: ``time.monotonic()`` on arrival: how many calls came in a window of time.
    received_at: float = field(default_factory=time.monotonic)

    @property
    def parts(self) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = self.body["contents"][0]["parts"]
        return parts

    @property
    def image_config(self) -> dict[str, Any]:
        config: dict[str, Any] = self.body.get("generationConfig", {}).get("imageConfig", {})
        return config

    @property
    def images(self) -> list[bytes]:
        return [_b64decode(p["inlineData"]["data"]) for p in self.parts if "inlineData" in p]


@dataclass
class FakeGemini:
    """The fake server; start with `start` (or use as a context manager)."""

    api_key: str = "fake-key"
    #: More keys it accepts besides ``api_key``: a key pool.
    api_keys: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 0
    #: Default extra latency of a success, for demos.
    delay_s: float = 0.0
    #: (width, height) of every answer's image; None: the size Google would return.
    answer_size: tuple[int, int] | None = None
    requests: list[SeenRequest] = field(default_factory=list)
    _script: deque[Reply] = field(default_factory=deque)
    _key_scripts: dict[str, deque[Reply]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _httpd: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    #: The Batch API's jobs and the Files API's files.
    batches: FakeBatches = field(init=False)

    def __post_init__(self) -> None:
        self.batches = FakeBatches(self._generate, self.api_key, _STATUS_NAMES)

    def _generate(self, model: str, api_key: str, body: dict[str, Any]) -> tuple[int, Any]:
        """One request of a batch job, answered as ``generateContent`` would answer it."""
        path = f"/v1beta/models/{model}:generateContent"
        status, payload, _ = self.respond(path, api_key, json.dumps(body).encode())
        return status, payload

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def script_key(self, api_key: str, *replies: Reply) -> None:
        """Replies for requests with ``api_key`` alone (one of a pool: Google's quotas
        are per key), used before the shared script's."""
        with self._lock:
            self._key_scripts.setdefault(api_key, deque()).extend(replies)

    def _keyed_reply(self, api_key: str) -> Reply | None:
        with self._lock:
            script = self._key_scripts.get(api_key)
            return script.popleft() if script else None

    def start(self) -> FakeGemini:
        handler = functools.partial(_Handler, self)
        self._httpd = _Server((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else Reply(delay_s=self.delay_s)

    def _record(self, seen: SeenRequest) -> None:
        with self._lock:
            self.requests.append(seen)

    def respond(self, path: str, api_key: str, raw: bytes) -> tuple[int, dict[str, Any], float]:
        """(HTTP status, JSON body, seconds to wait before sending it) for one request to
        ``path`` with ``x-goog-api-key: api_key`` and body ``raw``."""
        match = _PATH_RE.match(path.split("?", 1)[0])
        if match is None:
            return _error(404, f"no route for {path}")
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "Invalid JSON payload received.")
        seen = SeenRequest(model=match.group(1), api_key=api_key, body=body)
        self._record(seen)
        if api_key != self.api_key and api_key not in self.api_keys:
            return _refused_key(_error(400, "API key not valid. Please pass a valid API key."))
        reply = self._keyed_reply(api_key) or self._next_reply()
        if reply.status != 200:
            status, error, _ = _error(reply.status, reply.message or f"scripted {reply.status}")
            return status, _with_retry_info(error, reply.retry_delay), reply.delay_s
        try:
            return 200, _answer(seen, reply, self.answer_size), reply.delay_s
        except ValueError as exc:
            return _error(400, str(exc))


class _Server(ThreadingHTTPServer):
    """With a listen backlog for bursts: at the default 5, a hundred calls connecting at
    once lose SYNs and wait out the kernel's retransmits (1 s, 3 s, 7 s, ...)."""

    request_queue_size = 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(self, fake: FakeGemini, *args: Any) -> None:
        self.fake = fake
        super().__init__(*args)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if not self._batch_api("GET", b""):
            self._send(BatchAnswer(404, b'{"error": {"code": 404, "message": "no such route"}}'))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self._batch_api("POST", raw):
            return
        status, payload, delay_s = self.fake.respond(
            self.path, self.headers.get("x-goog-api-key", ""), raw
        )
        if delay_s:
            time.sleep(delay_s)
        data = json.dumps(payload).encode()
        # A client that gave up (its timeout) is not an error: there is nobody to answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def _batch_api(self, method: str, raw: bytes) -> bool:
        """Whether the request was one of the Batch or Files API's (and is answered)."""
        headers = {name.lower(): value for name, value in self.headers.items()}
        host = self.headers.get("Host", f"{self.fake.host}:{self.fake.port}")
        answer = self.fake.batches.handle(method, self.path, headers, raw, host)
        if answer is None:
            return False
        self._send(answer)
        return True

    def _send(self, answer: BatchAnswer) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)


def _error(code: int, message: str) -> tuple[int, dict[str, Any], float]:
    status = _STATUS_NAMES.get(code, "UNKNOWN")
    return code, {"error": {"code": code, "message": message, "status": status}}, 0.0


def _refused_key(answer: tuple[int, dict[str, Any], float]) -> tuple[int, dict[str, Any], float]:
    """As Google tells a wrong API key: an ``ErrorInfo`` detail naming the reason."""
    answer[1]["error"]["details"] = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
        }
    ]
    return answer


def _with_retry_info(error: dict[str, Any], retry_delay: str) -> dict[str, Any]:
    if retry_delay:
        error["error"]["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
        ]
    return error


def _answer(seen: SeenRequest, reply: Reply, size: tuple[int, int] | None) -> dict[str, Any]:
    usage = {"promptTokenCount": 12, "totalTokenCount": 12}
    if reply.block_reason:
        return {"promptFeedback": {"blockReason": reply.block_reason}, "usageMetadata": usage}
    parts: list[dict[str, Any]] = []
    if reply.with_image and reply.finish_reason == "STOP":
        requested = _requested_size(seen)  # checked even when the size is fixed
        width, height = size or requested
        parts = [
            {"text": "Planning the composition.", "thought": True},
            {"inlineData": _inline(_png(64, 64, (90, 90, 90))), "thought": True},
            {"text": "Here is your image."},
            {"inlineData": _inline(_png(width, height, (250, 200, 20)))},
        ]
    else:
        parts = [{"text": "I can't make that image."}]
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": parts},
                "finishReason": reply.finish_reason,
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 12 + 258 * len(seen.images),
            "candidatesTokenCount": 1120,
            "thoughtsTokenCount": 200,
            "totalTokenCount": 1332 + 258 * len(seen.images),
        },
        "modelVersion": seen.model,
    }


def _requested_size(seen: SeenRequest) -> tuple[int, int]:
    config = seen.image_config
    size = config.get("imageSize", "1K")
    if size not in ("1K", "2K", "4K"):
        raise ValueError(f"imageSize must be 1K, 2K or 4K, got {size!r}")
    ratio = config.get("aspectRatio")
    if ratio is None:
        return output_size(_follow_first_input(seen.images), Resolution(size))
    try:
        aspect = AspectRatio(ratio)
    except ValueError:
        raise ValueError(f"unsupported aspectRatio {ratio!r}") from None
    if aspect is AspectRatio.AUTO:
        raise ValueError("aspectRatio 'auto' is not a value Google accepts")
    return output_size(aspect, Resolution(size))


def _follow_first_input(images: list[bytes]) -> AspectRatio:
    """No ``aspectRatio`` sent: the shape of the first input as shown, else square."""
    if not images:
        return AspectRatio.R1_1
    with Image.open(io.BytesIO(images[0])) as first:
        return nearest_aspect_ratio(*shown_size(first))


def _inline(data: bytes) -> dict[str, str]:
    return {"mimeType": "image/png", "data": base64.b64encode(data).decode()}


@functools.lru_cache(maxsize=32)
def _png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    """A real PNG of the size asked; flat, so even 4K encodes in milliseconds."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        return base64.b64decode(text)

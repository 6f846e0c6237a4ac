"""A fake of the hosted jobs API on loopback, answering in its exact shapes.

What it does differently from bananastand, on purpose: envelopes carry ``msg`` only (no
``message``), taskIds look like ``task_nano-banana-pro_1765178625768``, there is no
Idempotency-Key support unless ``honour_idempotency_keys`` (the hosted API documents
none), no RateLimit headers, no event streams (recordInfo answers JSON whatever
``Accept`` asks for; ``accepts`` records what each recordInfo asked), and states go
waiting -> success on the second poll.

What tests tell it to do:

* ``drop_creates``: close the connection of that many createTask calls *after* making the
  task, as a lost answer would;
* ``refuse_creates``: answer the next createTask calls with these envelope codes (401,
  402, 429, 455, 500, 505 ...), making nothing;
* ``hang``: tasks stay ``generating`` until `HostedFake.finish` ends them;
* ``fail_with``: tasks end in ``fail`` with this (failCode, failMsg);
* ``unavailable_results``, ``unavailable_polls``: that many result downloads, or
  recordInfo calls, answer HTTP 503;
* ``webhook_secret``: a task that ends and names a ``callBackUrl`` is called back there,
  signed as the hosted API signs (``X-Webhook-Timestamp``, ``X-Webhook-Signature``); each
  delivery's answer is kept in ``callbacks``.

``POST /api/file-stream-upload`` keeps the file (``uploads``) and serves it back under
``/files/``; result links (``/results/...``) answer without a key.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from PIL import Image

from bananastand.client.webhooks import sign_hosted


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1024, 1024), "orange").save(buffer, "PNG")
    return buffer.getvalue()


PNG = _png()


@dataclass
class HostedFake:
    key: str = "hosted-key-123"
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    create_calls: int = 0
    drop_creates: int = 0
    refuse_creates: list[int] = field(default_factory=list)
    honour_idempotency_keys: bool = False
    hang: bool = False
    fail_with: tuple[str, str] | None = None
    unavailable_results: int = 0
    unavailable_polls: int = 0
    webhook_secret: str = ""
    polls: dict[str, int] = field(default_factory=dict)
    #: (taskId, Accept header or None) of each recordInfo call, in order.
    accepts: list[tuple[str, str | None]] = field(default_factory=list)
    #: The Idempotency-Key header of each createTask call (None: without one).
    idempotency_keys: list[str | None] = field(default_factory=list)
    #: fileName -> bytes of each upload.
    uploads: dict[str, bytes] = field(default_factory=dict)
    #: (taskId, HTTP status, answer body) of each callback delivered.
    callbacks: list[tuple[str, int, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base_url: str = ""
    _by_key: dict[str, str] = field(default_factory=dict)

    def create(self, body: dict[str, Any], idempotency_key: str | None = None) -> str:
        with self.lock:
            self.create_calls += 1
            self.idempotency_keys.append(idempotency_key)
            if self.honour_idempotency_keys and idempotency_key in self._by_key:
                return self._by_key[idempotency_key]
            task_id = f"task_{body['model']}_{int(time.time() * 1000)}{len(self.tasks):03d}"
            if idempotency_key is not None:
                self._by_key[idempotency_key] = task_id
            now = int(time.time() * 1000)
            self.tasks[task_id] = {
                "taskId": task_id,
                "model": body["model"],
                "state": "generating" if self.hang else "waiting",
                "param": json.dumps(body),
                "resultJson": "",
                "failCode": "",
                "failMsg": "",
                "costTime": None,
                "completeTime": None,
                "createTime": now,
                "updateTime": now,
                "creditsConsumed": 0,
            }
            return task_id

    def request_of(self, task_id: str) -> dict[str, Any]:
        """The createTask body the task was made from."""
        with self.lock:
            body: dict[str, Any] = json.loads(self.tasks[task_id]["param"])
        return body

    def record(self, task_id: str) -> dict[str, Any] | None:
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None:
                return None
            self.polls[task_id] = self.polls.get(task_id, 0) + 1
            ends = self.polls[task_id] >= 2 and task["state"] == "waiting"
        if ends:
            self.finish(task_id, call_back=False)
        with self.lock:
            return dict(task)

    def finish(self, task_id: str, *, call_back: bool = True) -> None:
        """End the task as ``fail_with`` says (success without it); then call it back when
        it names a callBackUrl and the fake has a ``webhook_secret``."""
        with self.lock:
            task = self.tasks[task_id]
            now = int(time.time() * 1000)
            task.update(costTime=1200, completeTime=now, updateTime=now)
            if self.fail_with is None:
                url = f"{self.base_url}/results/{task_id}.png"
                task.update(
                    state="success",
                    resultJson=json.dumps({"resultUrls": [url]}),
                    creditsConsumed=18,
                )
            else:
                fail_code, fail_msg = self.fail_with
                task.update(state="fail", failCode=fail_code, failMsg=fail_msg)
            callback_url = json.loads(task["param"]).get("callBackUrl")
            record = dict(task)
        if call_back and callback_url and self.webhook_secret:
            self.call_back(callback_url, record)

    def call_back(self, url: str, record: dict[str, Any]) -> None:
        timestamp = int(time.time())
        success = record["state"] == "success"
        body = {
            "code": 200 if success else 501,
            "msg": "success" if success else record["failMsg"],
            "data": record,
        }
        headers = {
            "X-Webhook-Timestamp": str(timestamp),
            "X-Webhook-Signature": sign_hosted(self.webhook_secret, record["taskId"], timestamp),
        }
        answer = httpx.post(url, json=body, headers=headers, timeout=30)
        with self.lock:
            self.callbacks.append((record["taskId"], answer.status_code, answer.text))


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (file name, bytes)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), payload)
    return fields


def serve(fake: HostedFake) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, code: int, msg: str, data: Any = None, **extra: Any) -> None:
            body = json.dumps({"code": code, "msg": msg, "data": data, **extra}).encode()
            self._send(body, "application/json")

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {fake.key}":
                return True
            self._answer(401, "You do not have access permissions")
            return False

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path.startswith("/results/"):
                with fake.lock:
                    unavailable = fake.unavailable_results > 0
                    fake.unavailable_results -= unavailable
                if unavailable:
                    self.send_error(503)
                else:
                    self._send(PNG, "image/png")
            elif parts.path.startswith("/files/"):
                with fake.lock:
                    data = fake.uploads.get(parts.path.removeprefix("/files/"))
                if data is None:
                    self.send_error(404)
                else:
                    self._send(data, "application/octet-stream")
            elif not self._authorized():
                return
            elif parts.path == "/api/v1/jobs/recordInfo":
                task_id = parse_qs(parts.query).get("taskId", [""])[0]
                with fake.lock:
                    fake.accepts.append((task_id, self.headers.get("Accept")))
                    unavailable = fake.unavailable_polls > 0
                    fake.unavailable_polls -= unavailable
                if unavailable:
                    self.send_error(503)
                    return
                record = fake.record(task_id)
                if record is None:
                    self._answer(404, "recordInfo is null")
                else:
                    self._answer(200, "success", record)
            elif parts.path == "/api/v1/chat/credit":
                self._answer(200, "success", 42)
            else:
                self._answer(404, "Not Found")

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            if not self._authorized():
                return
            path = urlsplit(self.path).path
            if path == "/api/v1/jobs/createTask":
                self._create(json.loads(raw))
            elif path == "/api/file-stream-upload":
                self._upload(raw)
            else:
                self._answer(404, "Not Found")

        def _create(self, body: dict[str, Any]) -> None:
            with fake.lock:
                refusal = fake.refuse_creates.pop(0) if fake.refuse_creates else None
            if refusal is not None:
                with fake.lock:
                    fake.create_calls += 1
                self._answer(refusal, f"refused with {refusal}")
                return
            task_id = fake.create(body, self.headers.get("Idempotency-Key"))
            with fake.lock:
                drop = fake.drop_creates > 0
                fake.drop_creates -= drop
            if drop:
                self.close_connection = True
                self.connection.close()
                return
            self._answer(200, "success", {"taskId": task_id})

        def _upload(self, raw: bytes) -> None:
            fields = _multipart(self.headers["Content-Type"], raw)
            file_name, data = fields["file"]
            name = file_name or f"upload-{len(fake.uploads)}"
            with fake.lock:
                fake.uploads[name] = data
            url = f"{fake.base_url}/files/{name}"
            data_out = {
                "fileName": name,
                "filePath": f"{fields['uploadPath'][1].decode()}/{name}",
                "downloadUrl": url,
                "fileSize": len(data),
                "mimeType": "image/png",
                "uploadedAt": "2026-01-01T00:00:00Z",
            }
            self._answer(200, "File uploaded successfully", data_out, success=True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server

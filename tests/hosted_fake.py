"""A fake of the hosted jobs API on loopback, answering in its exact shapes.

What it does differently from bananastand, on purpose: envelopes carry ``msg`` only (no
``message``), taskIds look like ``task_nano-banana-pro_1765178625768``, there is no
Idempotency-Key support and no RateLimit headers, no event streams (recordInfo answers
JSON whatever ``Accept`` asks for; ``accepts`` records what each recordInfo asked), and
states go waiting -> success.
``drop_creates`` closes the connection of that many createTask calls *after* making the
task, as a lost answer would.
"""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1024, 1024), "orange").save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class HostedFake:
    key: str = "hosted-key-123"
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    create_calls: int = 0
    drop_creates: int = 0
    polls: dict[str, int] = field(default_factory=dict)
    #: (taskId, Accept header or None) of each recordInfo call, in order.
    accepts: list[tuple[str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base_url: str = ""

    def create(self, body: dict[str, Any]) -> str:
        with self.lock:
            self.create_calls += 1
            task_id = f"task_{body['model']}_{int(time.time() * 1000)}{len(self.tasks):03d}"
            now = int(time.time() * 1000)
            self.tasks[task_id] = {
                "taskId": task_id,
                "model": body["model"],
                "state": "waiting",
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

    def record(self, task_id: str) -> dict[str, Any] | None:
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None:
                return None
            self.polls[task_id] = self.polls.get(task_id, 0) + 1
            if self.polls[task_id] >= 2 and task["state"] == "waiting":
                now = int(time.time() * 1000)
                url = f"{self.base_url}/results/{task_id}.png"
                task.update(
                    state="success",
                    resultJson=json.dumps({"resultUrls": [url]}),
                    costTime=1200,
                    completeTime=now,
                    updateTime=now,
                    creditsConsumed=18,
                )
            return dict(task)


PNG = _png()


def serve(fake: HostedFake) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, code: int, msg: str, data: Any = None) -> None:
            body = json.dumps({"code": code, "msg": msg, "data": data}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
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
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)
            elif not self._authorized():
                return
            elif parts.path == "/api/v1/jobs/recordInfo":
                task_id = parse_qs(parts.query).get("taskId", [""])[0]
                with fake.lock:
                    fake.accepts.append((task_id, self.headers.get("Accept")))
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
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if not self._authorized():
                return
            if urlsplit(self.path).path != "/api/v1/jobs/createTask":
                self._answer(404, "Not Found")
                return
            task_id = fake.create(body)
            with fake.lock:
                drop = fake.drop_creates > 0
                fake.drop_creates -= drop
            if drop:
                self.close_connection = True
                self.connection.close()
                return
            self._answer(200, "success", {"taskId": task_id})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server

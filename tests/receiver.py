"""A webhook receiver for tests: a small threaded HTTP server on loopback that records
every request and answers from a script (status, headers, and a delay before answering,
or a hold until the test lets the answer go)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from waiting import DEADLINE_S, wait_for


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    sleep_s: float = 0.0
    #: Answer only once this is set (by the test): a receiver that hangs for as long as a
    #: test needs, however slow the machine, where a sleep would race the test's steps.
    hold: threading.Event | None = None


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when the request arrived


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler still sleeping must not hold up the test's end

    def handle_error(self, request: Any, client_address: Any) -> None:
        """The far side hung up (a killed server, a timed-out sender): not our failure."""


class Receiver:
    """Answers request N with ``script[N]``, then with ``default`` once the script is used."""

    def __init__(
        self, port: int = 0, script: list[Answer] | None = None, default: Answer | None = None
    ) -> None:
        self.script = list(script or [])
        self.default = default or Answer()
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    index = len(receiver.requests)
                    receiver.requests.append(
                        Received(self.path, dict(self.headers.items()), body, time.monotonic())
                    )
                    answer = (
                        receiver.script[index] if index < len(receiver.script) else receiver.default
                    )
                if answer.sleep_s:
                    time.sleep(answer.sleep_s)
                if answer.hold is not None:
                    answer.hold.wait(DEADLINE_S)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", port), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def wait_for(self, count: int, timeout: float = DEADLINE_S) -> list[Received]:
        """Every request so far, once there are at least ``count``."""
        return wait_for(
            self._received,
            lambda received: len(received) >= count,
            what=f"{count} requests received",
            timeout=timeout,
            interval=0.02,
        )

    def _received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

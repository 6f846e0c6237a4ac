"""Server-sent events, parsed from the bytes of an event stream as they arrive.

The flows feed `EventDecoder` whatever chunks the driver read; it holds no I/O of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from bananastand.client.errors import TransportError

EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None


class EventDecoder:
    """Server-sent events from the bytes of a stream, as they arrive (the WHATWG rules a
    client needs: fields, multi-line data, comments, the three line endings).

    Not httpx-sse: it reads the response itself (``iter_sse``/``aiter_sse``), one version
    for sync and one for async, while the flows must stay free of I/O; and its line
    decoder is private API. The format is small enough to parse here.
    """

    #: Largest event (or line) accepted: a record is a few KB, its ``param`` at most 256 KB.
    MAX_BYTES = 8 * 1024 * 1024

    def __init__(self) -> None:
        self._pending = b""
        self._after_cr = False
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self._last_id: str | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events that ``chunk`` completes."""
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split between two chunks
        lines = (self._pending + chunk).splitlines(keepends=True)
        self._pending = b""
        if lines and not lines[-1].endswith((b"\n", b"\r")):
            self._pending = lines.pop()  # unterminated: waits for the rest
        self._after_cr = bool(lines) and lines[-1].endswith(b"\r")
        if len(self._pending) > self.MAX_BYTES:
            raise TransportError("event stream: a line longer than the client accepts")
        events = []
        for raw in lines:
            event = self._line(raw.rstrip(b"\r\n").decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: keep-alive
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._size += len(value)
            if self._size > self.MAX_BYTES:
                raise TransportError("event stream: an event larger than the client accepts")
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        return None  # "retry" and unknown fields: nothing this client uses

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event, self._size = [], "", 0
        if not data:
            return None
        return ServerSentEvent(event=event or "message", data="\n".join(data), id=self._last_id)


def is_event_stream(response: httpx.Response) -> bool:
    content_type = str(response.headers.get("content-type", ""))
    return content_type.split(";")[0].strip().lower() == EVENT_STREAM

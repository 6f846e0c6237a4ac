"""``bananastand worker --metrics-port P``: a worker's own ``/metrics``, with no web framework.

A worker serves no HTTP otherwise; one read-only path does not need the app, its
middleware and uvicorn (whose ``serve`` would take over the worker's signal handlers).
One request per connection, a bounded head, a time cap: enough for a Prometheus scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from bananastand.metrics.exposition import CONTENT_TYPE, token_accepted

#: A scrape's request head and its whole exchange are small and quick; anything else is cut.
_HEAD_LIMIT = 16 * 1024
_REQUEST_TIMEOUT_S = 10.0

Render = Callable[[], Awaitable[bytes]]


async def serve_metrics(host: str, port: int, render: Render, token: str) -> asyncio.Server:
    """Listen on ``host:port`` for ``GET /metrics`` (a bearer ``token`` when set)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                status, body, kind = await _answer(head, render, token)
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (
            TimeoutError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ):
            pass  # a scraper that hung up or spoke nonsense: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=_HEAD_LIMIT)


async def _answer(head: bytes, render: Render, token: str) -> tuple[str, bytes, str]:
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ", 2)
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines if line)
    }
    text = "text/plain; charset=utf-8"
    if target.split("?", 1)[0] != "/metrics":
        return "404 Not Found", b"Not Found\n", text
    if method != "GET":
        return "405 Method Not Allowed", b"Method Not Allowed\n", text
    if not token_accepted(token, headers.get("authorization")):
        return "401 Unauthorized", b"metrics token required\n", text
    return "200 OK", await render(), CONTENT_TYPE

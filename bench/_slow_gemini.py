"""The fake Gemini API served by asyncio, for thousands of slow calls at once.

    .venv/bin/python bench/_slow_gemini.py --port 8089 [--delay 10] [--size 64]

`bananastand.fake_gemini.FakeGemini` answers (``respond``: the same wire format, key check
and cached PNG), but over one event loop instead of a thread per connection: 5,000 calls
held for 10 s each are 5,000 sleeping coroutines, not 5,000 threads, and the listening
socket's backlog takes a burst of that many connections (``ThreadingHTTPServer`` keeps 5).
It prints ``fake Gemini API on URL`` once it listens, and runs until SIGTERM or SIGINT;
then it prints ``N calls, at most M at once``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from functools import partial

from bananastand.fake_gemini import FakeGemini
from e2e import FAKE_KEY, read_request

HOST = "127.0.0.1"
BACKLOG = 8192  # the kernel holds it to net.core.somaxconn


class Held:
    """Calls being answered now, and the most there ever were at once."""

    now = 0
    peak = 0


async def _connection(
    fake: FakeGemini, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            first, headers, body = await read_request(reader)
            path = first.split(b" ")[1].decode("latin-1")
            key = headers.get(b"x-goog-api-key", b"").decode("latin-1")
            status, payload, delay_s = fake.respond(path, key, body)
            Held.now += 1
            Held.peak = max(Held.peak, Held.now)
            try:
                await asyncio.sleep(delay_s)
            finally:
                Held.now -= 1
            data = json.dumps(payload).encode()
            writer.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=UTF-8\r\n"
                b"Content-Length: %d\r\n\r\n%s"
                % (status, b"OK" if status == 200 else b"Error", len(data), data)
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the caller closed its connection
    finally:
        writer.close()


async def serve(fake: FakeGemini, port: int) -> None:
    server = await asyncio.start_server(
        partial(_connection, fake), HOST, port, backlog=BACKLOG, limit=2**20
    )
    print(f"fake Gemini API on http://{HOST}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()
        print(f"{len(fake.requests)} calls, at most {Held.peak} at once", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=10.0, help="seconds before each answer")
    parser.add_argument("--size", type=int, default=64, help="answers' side in pixels")
    args = parser.parse_args()
    fake = FakeGemini(api_key=FAKE_KEY, delay_s=args.delay, answer_size=(args.size, args.size))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(fake, args.port))


if __name__ == "__main__":
    main()

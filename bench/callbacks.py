"""Callback latency and throughput against ``bananastand serve`` run as a user runs it.

    .venv/bin/python bench/callbacks.py [--rates 25,50,100,200] [--tasks 2000] [--warmup 50]

In a fresh temporary data folder it makes a test key (``bananastand keys create --test``),
starts ``bananastand serve`` (its defaults, loopback allow-listed for callbacks, access log
off) as a child process, and a loopback receiver in this process (its own thread and event
loop, answering 200 at once, keep-alive). Then, for each offered rate, it creates its share
of ``--tasks`` sandbox tasks at that rate, all the same request (the sandbox's render cache
makes generation nearly free, so what is measured is the task and callback machinery),
each with a ``callBackUrl`` to the receiver, and waits for every callback.

It prints, per rate: createTask-to-callback-received p50/p99 (from sending createTask to
the callback arriving), task-end-to-callback p50/p99 (from the task's ``completeTime`` to
the callback arriving, same clock), and deliveries/s (callbacks over the span from the
first to the last). The aim: p99 createTask-to-callback under 250 ms at 100 tasks/s. It
never fails on speed; it exits 1 when a callback is missing or arrives twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from _serve import HOST, free_port, start_serve, test_key

BODY = {"model": "nano-banana-pro", "input": {"prompt": "a banana in sunglasses"}}


@dataclass
class Receiver:
    """Records (arrival time, completeTime) per taskId; counts duplicates."""

    port: int = field(default_factory=free_port)
    arrivals: dict[str, tuple[float, int, int]] = field(default_factory=dict)
    duplicates: int = 0
    ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True).start()
        self.ready.wait(10)

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._handle, HOST, self.port, backlog=1024)
        self.ready.set()
        async with server:
            await server.serve_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                arrived = time.time()
                data = json.loads(body)["data"]
                if data["taskId"] in self.arrivals:
                    self.duplicates += 1
                else:
                    self.arrivals[data["taskId"]] = (
                        arrived,
                        data["completeTime"],
                        data["completeTime"] - data["createTime"],
                    )
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def offer(
    base: str, key: str, callback: str, rate: float, count: int
) -> tuple[dict[str, float], float]:
    """Create ``count`` tasks at ``rate``/s; returns taskId -> send time, and the rate
    actually achieved."""
    sent: dict[str, float] = {}
    body = {**BODY, "callBackUrl": callback}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def one(at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            started = time.time()
            answer = (
                await client.post(
                    "/api/v1/jobs/createTask",
                    json=body,
                    headers={"Authorization": f"Bearer {key}"},
                )
            ).json()
            if answer["code"] != 200:
                raise RuntimeError(f"createTask failed: {answer}")
            sent[answer["data"]["taskId"]] = started

        t0 = time.monotonic() + 0.05
        began = time.monotonic()
        await asyncio.gather(*(one(t0 + i / rate) for i in range(count)))
        return sent, count / (time.monotonic() - began)


def wait_for(receiver: Receiver, ids: set[str], timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ids <= receiver.arrivals.keys():
            return True
        time.sleep(0.05)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="25,50,100,200")
    parser.add_argument("--tasks", type=int, default=2000, help="split evenly over the rates")
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",")]
    per_rate = args.tasks // len(rates)

    data_dir = Path(tempfile.mkdtemp(prefix="bench-callbacks-"))
    port = free_port()
    env = {
        **os.environ,
        "BANANASTAND_DATA_DIR": str(data_dir),
        "BANANASTAND_PORT": str(port),
        "BANANASTAND_ALLOW_PRIVATE_NETWORKS": HOST,
        "BANANASTAND_ACCESS_LOG": "false",
        "BANANASTAND_LOG_LEVEL": "WARNING",
        "BANANASTAND_LOG_FORMAT": "json",
        # One key offers hundreds of tasks a second: no per-key rate limit, no waiting cap.
        "BANANASTAND_CREATE_RATE": "unlimited",
        "BANANASTAND_READ_RATE": "unlimited",
        "BANANASTAND_MAX_WAITING_TASKS": "0",
    }
    key = test_key(env)
    try:
        server = start_serve(env, data_dir / "serve.log", port)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    receiver = Receiver()
    receiver.start()
    base = f"http://{HOST}:{port}"
    callback = f"http://{HOST}:{receiver.port}/hook"
    try:
        warm, _ = asyncio.run(offer(base, key, callback, 50, args.warmup))
        wait_for(receiver, set(warm))
        print(f"bananastand serve (defaults, SQLite synchronous=FULL), {per_rate} tasks per rate")
        print(
            f"{'offered/s':>9} {'achieved/s':>10} {'create->cb p50':>14} {'p99':>8} "
            f"{'end->cb p50':>11} {'p99':>8} {'deliveries/s':>12} {'task run p50':>12} {'p99':>8}"
        )
        failed = False
        for rate in rates:
            sent, achieved = asyncio.run(offer(base, key, callback, rate, per_rate))
            if not wait_for(receiver, set(sent)):
                missing = len(set(sent) - receiver.arrivals.keys())
                print(f"{rate:>9g}: {missing} callbacks never arrived", file=sys.stderr)
                failed = True
                continue
            arrivals = [receiver.arrivals[task_id] for task_id in sent]
            create_ms = [(arrivals[i][0] - s) * 1000 for i, s in enumerate(sent.values())]
            end_ms = [(arrived - completed / 1000) * 1000 for arrived, completed, _ in arrivals]
            run_ms = [float(ran) for _, _, ran in arrivals]
            times = [arrived for arrived, _, _ in arrivals]
            rate_out = len(times) / max(1e-9, max(times) - min(times))
            print(
                f"{rate:>9g} {achieved:>10.1f} {statistics.median(create_ms):>11.1f} ms "
                f"{percentile(create_ms, 0.99):>5.1f} ms {statistics.median(end_ms):>8.1f} ms "
                f"{percentile(end_ms, 0.99):>5.1f} ms {rate_out:>12.1f} "
                f"{statistics.median(run_ms):>9.1f} ms {percentile(run_ms, 0.99):>5.1f} ms"
            )
        if receiver.duplicates:
            print(f"{receiver.duplicates} callbacks arrived twice", file=sys.stderr)
            failed = True
        return 1 if failed else 0
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

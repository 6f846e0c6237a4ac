"""The batch client against a local server: is the client ever the bottleneck?

    .venv/bin/python bench/batch.py [--jobs 1000] [--concurrency 64] [--no-pin]

In a fresh temporary data folder it makes a test key, starts ``bananastand serve`` (its
defaults, rate limits ``unlimited``, no cap on waiting tasks, access log off) as a child
process, and runs, all with the same request (the sandbox's render cache makes generation
nearly free, so what is measured is the machinery):

1. server end-to-end: ``--jobs`` createTask calls from a tight async loop of the SDK
   (``--concurrency`` in flight, no waiting), then the time until the server has finished
   them all (the newest ``completeTime``): what the server can do, with no client pacing;
2. ``bananastand batch`` of ``--jobs`` lines at ``--concurrency``, as a user runs it (a child
   process: upload-free lines, createTask, waiting on the task's event stream, download,
   manifest): its wall time, jobs/s and CPU time (``getrusage`` of the child).

On a machine with two or more CPUs (Linux) the server runs on CPU 0 and every client (this
script's SDK loop, the batch) on CPU 1, so each side has a core of its own. Besides both
rates and their ratio (batch / server) it prints the server's CPU time per task in each
part (from ``/proc``): the side near 100 % of its core is the bottleneck. It never fails
on speed, and exits 1 when the batch fails or the server made more than one task per line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from _serve import HOST, bananastand, free_port, on_cpu, start_serve, test_key
from bananastand.client import AsyncClient

INPUT = {"prompt": "a banana in sunglasses"}


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far; None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_tasks(base: str, key: str) -> tuple[int, int]:
    """(tasks, newest completeTime) of the key's account."""
    total, newest, cursor = 0, 0, None
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as http:
        while True:
            params: dict[str, str | int] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            data = http.get("/api/v1/jobs/list", params=params).json()["data"]
            for item in data["items"]:
                total += 1
                newest = max(newest, item["completeTime"] or 0)
            cursor = data["nextCursor"]
            if not cursor:
                return total, newest


async def server_rate(base: str, key: str, jobs: int, concurrency: int) -> float:
    body = {"model": "nano-banana-pro", "input": INPUT}
    async with AsyncClient(base, key) as client:
        queue = iter(range(jobs))
        ids: list[str] = []

        async def worker() -> None:
            for _ in queue:
                ids.append(await client.create(body))

        started_ms = time.time() * 1000
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        for task_id in ids[-concurrency:]:
            await client.wait(task_id)
    _, newest = count_tasks(base, key)
    return jobs / ((newest - started_ms) / 1000)


@dataclass(frozen=True)
class Pinning:
    """The CPU the server runs on and the one every client (this script, the batch) runs
    on; None: wherever the OS puts them."""

    server: int | None = None
    client: int | None = None


def pinning(no_pin: bool) -> Pinning:
    if no_pin or (os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"):
        return Pinning()
    return Pinning(server=0, client=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    args = parser.parse_args()
    pin = pinning(args.no_pin)
    if pin.client is not None:
        os.sched_setaffinity(0, {pin.client})  # the baseline's SDK loop is a client too
    data_dir = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    port = free_port()
    env = {
        **os.environ,
        "BANANASTAND_DATA_DIR": str(data_dir),
        "BANANASTAND_PORT": str(port),
        "BANANASTAND_ACCESS_LOG": "false",
        "BANANASTAND_LOG_LEVEL": "WARNING",
        "BANANASTAND_LOG_FORMAT": "json",
        "BANANASTAND_CREATE_RATE": "unlimited",
        "BANANASTAND_READ_RATE": "unlimited",
        "BANANASTAND_MAX_WAITING_TASKS": "0",
    }

    server_key, batch_key = test_key(env), test_key(env)
    try:
        server = start_serve(env, data_dir / "serve.log", port, cpu=pin.server)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    base = f"http://{HOST}:{port}"
    try:
        asyncio.run(server_rate(base, server_key, 50, 8))  # warm-up: render cache, connections
        baseline_cpu = process_cpu_seconds(server.pid)
        baseline = asyncio.run(server_rate(base, server_key, args.jobs, args.concurrency))
        baseline_cpu_after = process_cpu_seconds(server.pid)

        prompts = data_dir / "prompts.jsonl"
        prompts.write_text((json.dumps(INPUT) + "\n") * args.jobs)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_before = process_cpu_seconds(server.pid)
        started = time.monotonic()
        done = subprocess.run(
            [*bananastand(), "batch", str(prompts), "-o", str(data_dir / "out"),
             "--concurrency", str(args.concurrency)],
            env={**env, "BANANASTAND_BASE_URL": base, "BANANASTAND_API_KEY": batch_key},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=on_cpu(pin.client),
        )  # fmt: skip
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_after = process_cpu_seconds(server.pid)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        made, _ = count_tasks(base, batch_key)
        rate = args.jobs / wall
        print(f"bananastand serve (defaults, unlimited rates), {args.jobs} jobs, "
              f"concurrency {args.concurrency}")  # fmt: skip
        if pin.server is not None:
            print(f"server pinned to CPU {pin.server}, clients to CPU {pin.client}")
        print(f"server end-to-end (SDK create loop):  {baseline:8.1f} tasks/s")
        if baseline_cpu is not None and baseline_cpu_after is not None:
            per_task = (baseline_cpu_after - baseline_cpu) / args.jobs * 1000
            print(f"  server CPU: {per_task:.2f} ms per task")
        print(f"bananastand batch (create, wait, download, manifest): {rate:8.1f} jobs/s "
              f"in {wall:.1f} s")  # fmt: skip
        print(f"batch client CPU: {cpu:.2f} s ({cpu / wall * 100:.0f}% of one core, "
              f"{cpu / args.jobs * 1000:.2f} ms per job)")  # fmt: skip
        if server_before is not None and server_after is not None:
            used = server_after - server_before
            print(f"server CPU meanwhile: {used:.2f} s ({used / wall * 100:.0f}% of one core, "
                  f"{used / args.jobs * 1000:.2f} ms per job)")  # fmt: skip
        print(f"ratio batch / server: {rate / baseline:.2f}")
        if done.returncode != 0 or made != args.jobs:
            print(f"batch failed (exit {done.returncode}, {made} tasks):\n{done.stderr}")
            return 1
        return 0
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

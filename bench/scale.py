"""Processes apart: how fast a task made on one process reaches a worker in another, what
idle workers cost the database, how throughput scales with worker processes, and what
thousands of tasks in flight in one worker cost.

    .venv/bin/python bench/scale.py [--parts wakeup,idle,workers,flight] [--postgres]
        [--tasks 40] [--idle-workers 10] [--worker-counts 1,2,4] [--load-tasks 2000]
        [--load-warmup 200] [--outstanding 64] [--statements] [--profile DIR]
        [--in-flight 5000] [--upstream-delay 10]

For each database (a fresh SQLite file; with ``--postgres`` also a throwaway local
PostgreSQL with durable settings, see ``_postgres``), in a temporary data folder:

1. **Wake-up**: ``bananastand serve --no-worker`` (process A) and ``bananastand worker``
   (process B). ``--tasks`` sandbox tasks are created on A one at a time, 100 ms apart
   (B is idle each time), and the time from each task's creation to its claim is read
   from its row (``started_at - created_at``, by the database's clock on PostgreSQL).
   Baseline of the same run: the same on ``bananastand serve`` with its worker in the
   API's process (woken by a plain call). On PostgreSQL, also with
   ``BANANASTAND_PG_NOTIFY=off`` (what polling alone gives). Aim: p50 under 20 ms.
2. **Idle** (PostgreSQL): ``--idle-workers`` ``bananastand worker`` processes, nothing to
   do, for ``--idle-seconds`` once start-up is behind them (25 s); the statements they
   send are counted by
   ``pg_stat_statements`` (BEGIN and COMMIT included; the most frequent are printed).
   Aim: under 5 per second in all.
   The workers' CPU is printed for both databases.
3. **Workers** (PostgreSQL, always; see ``_scale_load``): ``bananastand serve`` with
   ``--worker-counts`` worker processes, sandbox tasks (a test key), ``--outstanding``
   kept in flight by a load client that takes their callbacks: tasks/s, and CPU per task
   of the server (all its processes), PostgreSQL and the client. Aim: the server's CPU
   per task grows by under 15 % from the first count to the last (lock contention would
   show there).
4. **Flight** (PostgreSQL, always): ``--in-flight`` live tasks at once in one worker
   process (worker and upstream concurrency as many, no pacing) against the real Google
   provider and a fake Google (``_slow_gemini``, asyncio) answering a 64x64 PNG after
   ``--upstream-delay`` s. Makespan, CPU per task, the fake's most calls at once, and the
   peak RSS (VmHWM) of the worker and API processes. Aim: makespan under the delay plus
   1.2 x tasks x the server's CPU per task of the same run; the worker's peak RSS under
   500 MB.

Its soft limit on open files is raised to the hard one (the servers inherit it): 5,000
calls at once are 5,000 sockets in the worker, as many in the API and the load client.

It never fails on speed; it exits 1 when a task is not claimed or a process fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from _postgres import running_postgres
from _scale_load import in_flight_part, workers_part
from _serve import HOST, bananastand, free_port, start_serve, test_key
from api import BenchError, migrate, query

PARTS = ("wakeup", "idle", "workers", "flight")
BODY = {"model": "nano-banana-pro", "input": {"prompt": "a banana in sunglasses"}}


@dataclass(slots=True)
class Deployment:
    name: str
    folder: Path
    #: What the bench reads the rows with (the servers get it through ``env``).
    database_url: str
    postgres: bool

    @property
    def env(self) -> dict[str, str]:
        return settings_env(self.folder, self.database_url if self.postgres else "")


def settings_env(data_dir: Path, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANANASTAND_")}
    env.update(
        BANANASTAND_DATA_DIR=str(data_dir),
        BANANASTAND_ACCESS_LOG="false",
        BANANASTAND_LOG_FORMAT="json",
        BANANASTAND_CREATE_RATE="unlimited",
        BANANASTAND_READ_RATE="unlimited",
    )
    if database_url:
        env["BANANASTAND_DATABASE_URL"] = database_url
    return env


@contextlib.contextmanager
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started in the block, stopped (SIGTERM, then SIGKILL) when it ends."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for child in started:
            if child.poll() is None:
                child.terminate()
        for child in started:
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [*bananastand(), "worker", "--no-migrate"], env=env, stdout=log, stderr=log
        )


def wait_logged(path: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while text not in path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"{path.name}: no {text!r}; see {path}")
        time.sleep(0.05)


def claim_delays(deployment: Deployment, key: str, port: int, count: int) -> list[int]:
    """Create ``count`` tasks 100 ms apart on the API at ``port``; each one's creation to
    claim in ms, once every one was claimed."""
    ids = []
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        for _ in range(count):
            answer = client.post(
                "/api/v1/jobs/createTask", json=BODY, headers={"Authorization": f"Bearer {key}"}
            ).json()
            if answer["code"] != 200:
                raise BenchError(f"createTask answered {answer}")
            ids.append(answer["data"]["taskId"])
            time.sleep(0.1)
    listed = ", ".join(f"'{task_id}'" for task_id in ids)
    deadline = time.monotonic() + 60
    while True:
        rows = query(
            deployment.database_url,
            f"SELECT started_at - created_at FROM tasks WHERE id IN ({listed})"
            " AND started_at IS NOT NULL",
        )
        if len(rows) == count:
            return [int(str(row[0])) for row in rows]
        if time.monotonic() > deadline:
            raise BenchError(f"{count - len(rows)} of {count} tasks never claimed")
        time.sleep(0.2)


def wakeup_case(
    deployment: Deployment, key: str, label: str, count: int, *, apart: bool, **extra: str
) -> tuple[str, list[int]]:
    port = free_port()
    env = {**deployment.env, **extra, "BANANASTAND_PORT": str(port)}
    log = deployment.folder / f"case-{len(list(deployment.folder.glob('case-*')))}"
    with children() as started:
        if apart:
            started.append(start_serve(env, log.with_suffix(".api.log"), port,
                                       options=["--no-worker", "--no-migrate"]))  # fmt: skip
            worker = start_worker(env, log.with_suffix(".worker.log"))
            started.append(worker)
            wait_logged(log.with_suffix(".worker.log"), "worker started", worker)
        else:
            started.append(start_serve(env, log.with_suffix(".log"), port,
                                       options=["--no-migrate"]))  # fmt: skip
        time.sleep(1.0)  # the worker's first look for work is behind it
        return label, claim_delays(deployment, key, port, count)


def idle_cost(deployment: Deployment, workers: int, seconds: float) -> tuple[float, float]:
    """(statements/s on the database or NaN, CPU share of one core) of idle workers."""
    url = deployment.database_url
    postgres = deployment.postgres
    with children() as started:
        for n in range(workers):
            started.append(start_worker(deployment.env, deployment.folder / f"idle-{n}.log"))
        for n, process in enumerate(started):
            wait_logged(deployment.folder / f"idle-{n}.log", "worker started", process)
        # Start-up behind them: the first upkeep round (a third of the 60 s lease after
        # start) tries the periodic-jobs lease and purges once, then an hour goes by.
        time.sleep(25.0)
        if postgres:
            query(url, "SELECT pg_stat_statements_reset()")
        cpu_before = sum(process_cpu(process.pid) for process in started)
        time.sleep(seconds)
        cpu = (sum(process_cpu(process.pid) for process in started) - cpu_before) / seconds
        if not postgres:
            return float("nan"), cpu
        statements = query(
            url,
            "SELECT calls, query FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND query NOT LIKE '%pg_stat_statements%' ORDER BY calls DESC",
        )
        for calls, text in statements[:6]:
            print(f"    {int(str(calls)) / seconds:5.2f}/s  {' '.join(str(text).split())[:90]}")
        return sum(int(str(calls)) for calls, _ in statements) / seconds, cpu


def process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def describe(delays: Sequence[int]) -> str:
    ordered = sorted(delays)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"p50 {statistics.median(ordered):7.1f} ms  p90 {p90:6d} ms  max {ordered[-1]:6d} ms"


def run_deployment(deployment: Deployment, args: argparse.Namespace) -> None:
    print(f"\n{deployment.name}:")
    migrate(deployment.env)
    if "wakeup" in args.parts:
        wakeup_part(deployment, test_key(deployment.env), args.tasks)
    if "idle" in args.parts:
        idle_part(deployment, args.idle_workers, args.idle_seconds)


def wakeup_part(deployment: Deployment, key: str, count: int) -> None:
    cases = [
        wakeup_case(deployment, key, "API A -> worker B", count, apart=True),
        wakeup_case(deployment, key, "one process (baseline)", count, apart=False),
    ]
    if deployment.postgres:
        cases.append(
            wakeup_case(
                deployment, key, "A -> B, PG_NOTIFY=off", count, apart=True,
                BANANASTAND_PG_NOTIFY="off",
            )
        )  # fmt: skip
    for label, delays in cases:
        print(f"  create -> claim, {label:24s} {describe(delays)}")
    apart, alone = (statistics.median(delays) for _, delays in cases[:2])
    verdict = "met" if apart < 20 else "NOT met"
    print(f"  aim: p50 A -> B under 20 ms: {apart:.1f} -> {verdict} (one process: {alone:.1f} ms)")


def idle_part(deployment: Deployment, workers: int, seconds: float) -> None:
    per_s, cpu = idle_cost(deployment, workers, seconds)
    idle = f"  {workers} idle workers, {seconds:g} s: CPU {cpu:.1%} of a core"
    if math.isnan(per_s):
        print(idle)
        return
    print(f"{idle}, {per_s:.2f} statements/s on the database")
    verdict = "met" if per_s < 5 else "NOT met"
    print(f"  aim: under 5 statements/s: {per_s:.2f} -> {verdict}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=40, help="tasks per wake-up case")
    parser.add_argument("--idle-workers", type=int, default=10)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument(
        "--postgres", action="store_true", help="wake-up and idle also on a local PostgreSQL"
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"of {', '.join(PARTS)}")
    parser.add_argument("--worker-counts", default="1,2,4", help="worker processes per run")
    parser.add_argument("--load-tasks", type=int, default=2000, help="measured tasks per run")
    parser.add_argument("--load-warmup", type=int, default=200, help="unmeasured tasks first")
    parser.add_argument("--outstanding", type=int, default=64, help="tasks kept in flight")
    parser.add_argument(
        "--statements",
        action="store_true",
        help="workers: count the database's statements per task (pg_stat_statements)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="workers: py-spy's samples of each measured span, into this folder",
    )
    parser.add_argument("--in-flight", type=int, default=5000, help="tasks at once, one worker")
    parser.add_argument("--upstream-delay", type=float, default=10.0, help="the fake's seconds")
    args = parser.parse_args(argv)
    args.parts = args.parts.split(",")
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    return args


def processes_apart(root: Path, args: argparse.Namespace) -> None:
    """The wake-up and idle parts, on SQLite and (``--postgres``) PostgreSQL."""
    with contextlib.ExitStack() as stack:
        sqlite_folder = root / "sqlite"
        deployments = [
            Deployment("SQLite", sqlite_folder, f"sqlite:///{sqlite_folder}/bananastand.db", False)
        ]
        if args.postgres:
            server = stack.enter_context(running_postgres(free_port(), statements=True))
            url = server.url()
            query(url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements", autocommit=True)
            deployments.append(Deployment("PostgreSQL", root / "pg", url, True))
        for deployment in deployments:
            deployment.folder.mkdir(parents=True)
            run_deployment(deployment, args)


def under_load(root: Path, args: argparse.Namespace) -> None:
    """The workers and flight parts, on a PostgreSQL of their own (counting statements
    only with ``--statements``: it costs a little on every one)."""
    folder = root / "load"
    folder.mkdir()
    with running_postgres(free_port(), statements=args.statements) as server:
        if "workers" in args.parts:
            counts = [int(count) for count in args.worker_counts.split(",")]
            asyncio.run(
                workers_part(
                    server,
                    folder,
                    counts,
                    args.load_tasks,
                    args.load_warmup,
                    args.outstanding,
                    statements=args.statements,
                    profile=args.profile,
                )
            )
        if "flight" in args.parts:
            asyncio.run(in_flight_part(server, folder, args.in_flight, args.upstream_delay))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    root = Path(tempfile.mkdtemp(prefix="bananastand-scale-"))
    try:
        if {"wakeup", "idle"} & set(args.parts):
            processes_apart(root, args)
        if {"workers", "flight"} & set(args.parts):
            under_load(root, args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

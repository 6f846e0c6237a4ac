"""The two loaded parts of ``scale.py``: end-to-end throughput as worker processes are
added, and thousands of tasks in flight in one worker on a slow upstream.

Both drive ``bananastand serve`` with ``e2e.py``'s load client (K tasks outstanding, each
created with a ``callBackUrl`` on a loopback receiver) on a database of their own on the
throwaway PostgreSQL, and read CPU from /proc: the server's whole process tree (API,
supervisor, workers), PostgreSQL's (postmaster and backends), the load client's and the
fake upstream's, over the measured span only. Every callback sent goes to the one receiver,
so ``BANANASTAND_WEBHOOK_PER_HOST_CONCURRENCY`` is raised to the sender's whole pool (64).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _postgres import LocalPostgres
from api import BenchError, query
from e2e import TICKS, Hooks, Ours, Run, drive, fake_upstream, process_tree, sampled, started

CALLBACK_POOL = "64"
#: The most frequent statements ``--statements`` prints for each count.
STATEMENTS_SHOWN = 12
SLOW_FAKE = Path(__file__).with_name("_slow_gemini.py")


@dataclass(frozen=True, slots=True)
class Spent:
    """A measured run, and PostgreSQL's and the API process's own CPU seconds (part of
    the server's) over the same span."""

    run: Run
    postgres_cpu_s: float
    api_cpu_s: float

    def per_task_ms(self, cpu_s: float) -> float:
        return cpu_s * 1000 / self.run.tasks


def fresh_database(server: LocalPostgres, name: str) -> str:
    query(server.url(), f"CREATE DATABASE {name}", autocommit=True)
    return server.url(name)


def own_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def measured(
    side: Ours, hooks: Hooks, server: LocalPostgres, outstanding: int, tasks: int, pid: int | None
) -> Spent:
    assert side.process is not None
    postgres_0, api_0 = server.cpu_seconds(), own_cpu_s(side.process.pid)
    run = await drive(side, hooks, outstanding, tasks, pid, side.name)
    return Spent(run, server.cpu_seconds() - postgres_0, own_cpu_s(side.process.pid) - api_0)


def reset_statements(server: LocalPostgres, database: str) -> None:
    query(server.url(database), "SELECT pg_stat_statements_reset()")


def print_statements(server: LocalPostgres, database: str, tasks: int) -> None:
    """The statements of the measured span per task (all processes), the most frequent
    first: what each worker process added shows here, where CPU per task cannot say why."""
    rows = query(
        server.url(database),
        "SELECT calls, query FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND query NOT LIKE '%pg_stat_statements%' ORDER BY calls DESC",
    )
    total = sum(int(str(calls)) for calls, _ in rows)
    print(f"          statements per task: {total / tasks:.1f}")
    for calls, text in rows[:STATEMENTS_SHOWN]:
        print(f"          {int(str(calls)) / tasks:6.2f}  {' '.join(str(text).split())[:96]}")


async def workers_part(
    server: LocalPostgres,
    workdir: Path,
    counts: Sequence[int],
    tasks: int,
    warmup: int,
    outstanding: int,
    *,
    statements: bool = False,
    profile: Path | None = None,
) -> None:
    """Sandbox tasks/s and CPU per task for each count of worker processes, and whether the
    server's CPU per task grew by under 15 % from the first count to the last
    (``statements``: also what the database ran per task, ``server`` counting them;
    ``profile``: py-spy's samples of the measured span, a file per count there); raises
    BenchError when a task failed."""
    print(
        f"\nworkers (PostgreSQL, sandbox, K={outstanding}, {tasks} tasks after {warmup}):\n"
        f"  {'workers':>7} {'tasks/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'srv ms/t':>8} "
        f"{'(api)':>6} {'pg ms/t':>8} {'cli ms/t':>8} {'fail':>5}"
    )
    per_task: list[float] = []
    for count in counts:
        database = f"workers_{count}"
        side = Ours(
            f"{count} workers",
            worker_processes=count,
            test_key=True,
            extra={
                "BANANASTAND_DATABASE_URL": fresh_database(server, database),
                "BANANASTAND_WEBHOOK_PER_HOST_CONCURRENCY": CALLBACK_POOL,
            },
        )
        async with started(side, workdir, "") as hooks:
            await drive(side, hooks, outstanding, warmup, None, side.name)
            if statements:
                query(server.url(database), "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                reset_statements(server, database)
            with sampled(side, profile, f"workers-{count}"):
                spent = await measured(side, hooks, server, outstanding, tasks, None)
        run = spent.run
        per_task.append(spent.per_task_ms(run.server_cpu_s))
        print(
            f"  {count:>7} {run.tasks / run.seconds:>8.1f} {run.at(0.5):>7.1f} {run.p99_ms:>7.1f} "
            f"{per_task[-1]:>8.2f} {spent.per_task_ms(spent.api_cpu_s):>6.2f} "
            f"{spent.per_task_ms(spent.postgres_cpu_s):>8.2f} "
            f"{spent.per_task_ms(run.client_cpu_s):>8.2f} {run.failed:>5}",
            flush=True,
        )
        if statements:
            print_statements(server, database, tasks)
        if run.failed:
            raise BenchError(f"{run.failed} of {run.tasks} sandbox tasks failed")
    growth = per_task[-1] / per_task[0] - 1
    print(
        f"  aim: server CPU per task {counts[0]} -> {counts[-1]} workers grows under 15 %: "
        f"{growth:+.1%} -> {'met' if growth < 0.15 else 'NOT met'}"
    )


def peak_rss_mb(root: int) -> tuple[float, float]:
    """(API process, all worker processes) peak resident memory (VmHWM) in MB, of the
    server rooted at ``root``; read while they live."""
    api = workers = 0.0
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        peak = next(
            (int(line.split()[1]) / 1024 for line in status.splitlines() if "VmHWM" in line), 0.0
        )
        if pid == root:
            api = peak
        elif b"worker" in command:
            workers += peak
    return api, workers


async def in_flight_part(server: LocalPostgres, workdir: Path, tasks: int, delay_s: float) -> None:
    """``tasks`` live tasks at once in one worker process, each upstream call held for
    ``delay_s``, and whether the makespan and the worker's peak memory meet the aims;
    raises BenchError when a task failed."""
    slow_fake = [sys.executable, str(SLOW_FAKE), "--delay", str(delay_s), "--size", "64"]
    side = Ours(
        "in flight",
        worker_processes=1,
        extra={
            "BANANASTAND_DATABASE_URL": fresh_database(server, "in_flight"),
            "BANANASTAND_WORKER_CONCURRENCY": str(tasks),
            "BANANASTAND_UPSTREAM_CONCURRENCY": str(tasks),
            "BANANASTAND_WEBHOOK_PER_HOST_CONCURRENCY": CALLBACK_POOL,
        },
    )
    # Past the patience nothing is measured any more: the aim is long missed.
    hooks = Hooks(patience_s=max(120.0, 10 * delay_s + tasks * 0.1))
    with fake_upstream(workdir, None, slow_fake) as (upstream, upstream_pid):
        async with started(side, workdir, upstream, hooks):
            assert side.process is not None
            await drive(side, hooks, 20, 20, upstream_pid, "warm-up")
            spent = await measured(side, hooks, server, tasks, tasks, upstream_pid)
            api_mb, worker_mb = peak_rss_mb(side.process.pid)
    run = spent.run
    held = (workdir / "fake-gemini.log").read_text().strip().splitlines()[-1]
    aim_s = delay_s + 1.2 * run.server_cpu_s
    in_time, small = run.seconds < aim_s, worker_mb < 500
    if run.failed:
        raise BenchError(f"{run.failed} of {run.tasks} tasks in flight failed")
    print(
        f"\nin flight (PostgreSQL, live key, 1 worker process, concurrency {tasks}, upstream "
        f"answering a 64x64 PNG after {delay_s:g} s):\n"
        f"  {tasks} tasks: makespan {run.seconds:.1f} s, send -> callback p50 {run.at(0.5):.0f} ms "
        f"p99 {run.p99_ms:.0f} ms, {run.failed} failed; fake upstream: {held}\n"
        f"  CPU per task: server {spent.per_task_ms(run.server_cpu_s):.2f} ms, PostgreSQL "
        f"{spent.per_task_ms(spent.postgres_cpu_s):.2f} ms, load client "
        f"{spent.per_task_ms(run.client_cpu_s):.2f} ms, fake upstream "
        f"{spent.per_task_ms(run.upstream_cpu_s):.2f} ms\n"
        f"  peak RSS: worker {worker_mb:.0f} MB, API {api_mb:.0f} MB\n"
        f"  aim: makespan under {delay_s:g} s + 1.2 x {tasks} x CPU per task = {aim_s:.1f} s: "
        f"{'met' if in_time else 'NOT met'}; worker peak RSS under 500 MB: "
        f"{'met' if small else 'NOT met'}"
    )

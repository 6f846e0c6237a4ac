"""HTTP benchmark of createTask and recordInfo against a bare FastAPI endpoint, same run.

    .venv/bin/python bench/api.py [--duration 10] [--connections 32] [--threads 1]
                                  [--synchronous FULL|NORMAL] [--rounds 1] [--warmup 2]
                                  [--tasks 1000] [--profile DIR] [--no-pin] [--keep]
                                  [--postgres] [--database URL ...]

What it does, in a fresh temporary data folder:

1. makes a test key with ``bananastand keys create --test``;
2. starts ``bananastand serve --no-worker`` (access log off, log level WARNING, rate limits
   too high to refuse, no waiting-task cap) and the bare app of ``bench/bare_app.py``
   (uvicorn with the same settings), each on a free loopback port, and waits until both
   answer;
3. creates ``--tasks`` tasks over HTTP for recordInfo to read;
4. runs ``wrk --latency`` (scripts in ``bench/wrk``) against the bare GET, recordInfo and
   createTask in turn, each after a short warm-up (``--rounds N`` repeats this and reports
   the median of each figure);
5. kills the server with SIGKILL and counts the rows of the ``tasks`` table: every
   createTask that was answered "code":200 must be there (the answer promises a durable
   row), and nothing more than was sent.

With ``--postgres`` (a throwaway local PostgreSQL with durable settings, ``bench/_postgres.py``)
or ``--database URL`` (repeatable; a database for the benchmark alone: it is migrated, gets a
test key and its ``tasks`` rows are counted) a second ``bananastand serve --no-worker`` runs
on that database beside the SQLite one, and each round measures recordInfo and createTask on
both, one after the other; each such row is also compared with SQLite's of the same round
(req/s and CPU per answer; the CPU of a PostgreSQL the script started, on the servers' CPU,
counts as the server's). After kill -9 the local PostgreSQL is also stopped as a crash would
(``pg_ctl stop -m immediate``) and started again before its rows are counted.

On a machine with two or more CPUs the servers (and ``--postgres``'s database server) are
pinned to one CPU and wrk to another (``taskset``), so the load generator is not what limits
the numbers, and SQLite (in the server's process) and PostgreSQL get the same one CPU for
the server and its database. The table shows the CPU each side used, and how much of each
CPU other processes took; a speed probe (a fixed Python loop on the servers' CPU before each
round) shows contention that /proc/stat does not (a VM's host busy with other guests). It
prints requests/s, p50 and p99 per endpoint and the ratio of each to the bare endpoint
measured in the same run, and the server's CPU time per answer with the same ratio: on a
shared machine req/s swings with the neighbours' load while CPU per answer moves less.
Results and the machine are in docs/benchmarks.md. It never fails on speed; it exits 1 only
when requests failed or the durability check does not hold, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import fastapi
import httpx
import starlette
import uvicorn
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from _postgres import DURABLE, LocalPostgres, running_postgres

HERE = Path(__file__).resolve().parent
WRK_SCRIPTS = HERE / "wrk"
HOST = "127.0.0.1"
CREATE_BODY = '{"model":"nano-banana-pro","input":{"prompt":"a banana in sunglasses"}}'
CREATE_PATH = "/api/v1/jobs/createTask"
RECORD_PATH = "/api/v1/jobs/recordInfo"
#: py-spy samples without pausing the server (pausing it cut recordInfo's rate by 8x here);
#: the price is an occasional torn stack.
PY_SPY_OPTIONS = ("--threads", "--nonblocking")
#: Share of the servers' CPU taken by other processes above which a run is called disturbed.
BUSY = 0.1
#: A server below this share of its CPU was not the bottleneck of its run.
SATURATED = 0.9
#: The aims of the issue: requests/s of each endpoint over requests/s of the bare one.
AIMS = {"createTask": 0.4, "recordInfo": 0.5}
#: The aims for another database: its requests/s over SQLite's of the same run.
AIMS_VS_SQLITE = {"createTask": 0.75, "recordInfo": 0.75}
#: The database ``--postgres`` creates in its throwaway server.
BENCH_DATABASE = "bananastand_bench"


class BenchError(Exception):
    """Something kept the benchmark from running; the message says what."""


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    endpoint: str  # "bare GET", "recordInfo", "createTask"
    database: str  # the Backend's label ("SQLite", "PostgreSQL"); "" for the bare app
    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    sent: int
    good: int
    bad: int
    socket_errors: int
    server_cpu: float  # cores the server process used, on average
    server_cpu_s: float  # CPU seconds the server process used during the run
    db_cpu: float  # cores the database server used, on average (0: in-process or unknown)
    db_cpu_s: float  # CPU seconds the database server used during the run
    client_cpu: float  # cores wrk used, on average
    others_cpu: float | None  # share of the servers' CPU that other processes took
    others_client_cpu: float | None  # share of wrk's CPU that other processes took
    first_bad: str

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def cpu_us(self) -> float:
        """Server CPU per answered request, in microseconds, the database server's included
        when the script runs it (SQLite's is in the server's process anyway): unlike
        req/s, it hardly moves when other processes take turns on the server's CPU."""
        if not self.requests:
            return float("nan")
        return (self.server_cpu_s + self.db_cpu_s) / self.requests * 1e6

    @property
    def db_us(self) -> float:
        """The database server's share of ``cpu_us``."""
        return self.db_cpu_s / self.requests * 1e6 if self.requests else float("nan")

    @property
    def own_cpu(self) -> float:
        """Cores the server and its database server used together."""
        return self.server_cpu + self.db_cpu


# -- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def bananastand_python() -> list[str]:
    """The interpreter the ``bananastand`` command runs on (its shebang), else ours."""
    command = bananastand_command()[0]
    try:
        first = Path(command).read_text(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        first = ""
    if first.startswith("#!") and " " not in first[2:].strip():
        return [first[2:].strip()]
    return [sys.executable]


def listen(port: int) -> list[str]:
    return ["--host", HOST, "--port", str(port)]


def bananastand_command() -> list[str]:
    beside = Path(sys.executable).with_name("bananastand")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("bananastand")
    if found:
        return [found]
    raise BenchError("no `bananastand` command: install the project (make test builds .venv)")


def server_env(data_dir: Path, synchronous: str, database_url: str = "") -> dict[str, str]:
    # Nothing of the caller's BANANASTAND_* settings leaks in: the run is the same anywhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANANASTAND_")}
    if database_url:
        env["BANANASTAND_DATABASE_URL"] = database_url
    env.update(
        BANANASTAND_DATA_DIR=str(data_dir),
        BANANASTAND_ACCESS_LOG="false",
        BANANASTAND_LOG_LEVEL="WARNING",
        BANANASTAND_SQLITE_SYNCHRONOUS=synchronous,
        # Rate limits stay on (their cost is part of the hot path) but never refuse here;
        # the load would otherwise overrun the waiting-task cap too.
        BANANASTAND_CREATE_RATE="1000000/second",
        BANANASTAND_READ_RATE="1000000/second",
        BANANASTAND_MAX_WAITING_TASKS="0",
    )
    return env


def create_key(env: dict[str, str]) -> str:
    done = subprocess.run(
        [*bananastand_command(), "keys", "create", "--test", "--name", "bench"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise BenchError(f"`bananastand keys create --test` failed:\n{done.stderr[-2000:]}")
    return lines[-1].strip()


def migrate(env: dict[str, str]) -> None:
    """``bananastand migrate``: admin commands migrate only SQLite by themselves."""
    done = subprocess.run(
        [*bananastand_command(), "migrate"], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"`bananastand migrate` failed:\n{done.stdout}{done.stderr[-2000:]}")


class Server:
    """A child process listening on a port, its output in a log file."""

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                list(command), env=env, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, url: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited ({self.process.returncode}):\n{self.tail()}")
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise BenchError(
            f"{self.name} did not answer {url} within {timeout_s:.0f} s:\n{self.tail()}"
        )

    def cpu_seconds(self) -> float:
        """User + system CPU of the process (all its threads) so far, from /proc."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return float("nan")
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, nothing is flushed on the way out."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


@dataclass(frozen=True, slots=True)
class Pinning:
    server_prefix: list[str]
    client_prefix: list[str]
    server_cpu: int | None
    client_cpu: int | None
    note: str


def pinning(no_pin: bool, *, database: bool = False) -> Pinning:
    """taskset prefixes for the servers and for wrk, and a sentence saying what was done
    (``database``: a PostgreSQL server started here shares the servers' CPU)."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin:
        return Pinning([], [], None, None, "not pinned (--no-pin): servers and wrk share CPUs")
    if len(cpus) < 2:
        return Pinning([], [], None, None, f"not pinned: only CPU {cpus} available")
    if shutil.which("taskset") is None:
        note = "not pinned: no `taskset` (apt-get install util-linux); results are noisier"
        return Pinning([], [], None, None, note)
    server, client = cpus[0], cpus[1]
    servers = "servers and the PostgreSQL server" if database else "servers"
    return Pinning(
        ["taskset", "-c", str(server)],
        ["taskset", "-c", str(client)],
        server,
        client,
        f"{servers} pinned to CPU {server}, wrk to CPU {client} (taskset)",
    )


#: A fixed pure-Python loop timed on the servers' CPU while they idle (the best of 3).
PROBE = (
    "import time\nbest = 1e9\nfor _ in range(3):\n    t = time.perf_counter()\n"
    "    for i in range(1_000_000): pass\n    best = min(best, time.perf_counter() - t)\n"
    "print(best)"
)


def speed_probe(pin: Pinning) -> float | None:
    """Seconds the probe loop took on the servers' CPU: the same on a machine at rest,
    whatever the run (the best of three, so a preemption does not count; others@srv
    counts those). Contention from outside this machine (other tenants of a VM's host)
    shows here but not in /proc/stat, so others@srv can read 0 % while every figure of the
    run is slower; compare the probe with a quiet run's before comparing req/s."""
    done = subprocess.run(
        [*pin.server_prefix, sys.executable, "-c", PROBE], capture_output=True, text=True
    )
    try:
        return float(done.stdout.strip())
    except ValueError:
        return None


def cpu_busy_seconds(cpu: int | None) -> float | None:
    """Seconds one CPU ran processes (user, nice, system) or was taken by the hypervisor
    (steal). Interrupt and softirq time is left out: on loopback most of it is the network
    stack carrying the benchmark's own packets."""
    if cpu is None:
        return None
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{cpu} "):
                ticks = [int(field) for field in line.split()[1:]]
                user, nice, system, steal = ticks[0], ticks[1], ticks[2], ticks[7]
                busy = user + nice + system + steal
                return busy / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return None


# -- databases ---------------------------------------------------------------------------


def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` means psycopg 3, as it does to bananastand (SQLAlchemy's own
    default driver for it is psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql:", "postgresql+", "postgres:"))


def hide_password(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def query(url: str, sql: str, *, autocommit: bool = False) -> list[tuple[object, ...]]:
    """Rows of one statement on a connection of its own (closed at once)."""
    options = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    engine = create_engine(sqlalchemy_url(url), poolclass=NullPool, **options)
    try:
        with engine.connect() as connection:
            result = connection.execute(text(sql))
            rows = [tuple(row) for row in result] if result.returns_rows else []
            connection.commit()
            return rows
    except Exception as exc:
        raise BenchError(f"database {hide_password(url)}: {exc}") from exc
    finally:
        engine.dispose()


def count_tasks(url: str) -> int:
    # Through SQLAlchemy with the server's own URL: on SQLite a new connection replays the
    # WAL the killed server left behind; on PostgreSQL it counts what was committed.
    return int(query(url, "SELECT count(*) FROM tasks")[0][0])


def postgres_settings(url: str) -> dict[str, str]:
    names = ["server_version", *DURABLE, "wal_sync_method"]
    return {name: str(query(url, f"SHOW {name}")[0][0]) for name in names}


@dataclass(slots=True)
class Backend:
    """One ``bananastand serve --no-worker`` and the database it runs on."""

    label: str  # "SQLite", "PostgreSQL", "PostgreSQL 2"
    tag: str  # appended to endpoint names: "" for SQLite, "pg", "pg2"
    url: str  # the database, as the server is given it (SQLite: its file)
    describe: str  # a line for the header
    env: dict[str, str]
    local: LocalPostgres | None = None  # the server --postgres started, if this is it
    server: Server | None = None
    base: str = ""
    key: str = ""
    ids_file: Path | None = None
    rows_before: int = 0
    runs: list[Result] = field(default_factory=list)

    def name(self, endpoint: str) -> str:
        return f"{endpoint} {self.tag}" if self.tag else endpoint

    def db_cpu_seconds(self) -> Callable[[], float] | None:
        return self.local.cpu_seconds if self.local is not None else None


# -- load --------------------------------------------------------------------------------


async def _precreate(base_url: str, key: str, count: int, concurrency: int) -> list[str]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    ids: list[str] = []
    limit = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient) -> None:
        async with limit:
            answer = await client.post(CREATE_PATH, content=CREATE_BODY, headers=headers)
        body = answer.json()
        if body.get("code") != 200:
            raise BenchError(f"createTask failed while preparing: {answer.text[:300]}")
        ids.append(body["data"]["taskId"])

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0) as client:
        await asyncio.gather(*(one(client) for _ in range(count)))
    return ids


def precreate_tasks(base_url: str, key: str, count: int) -> list[str]:
    return asyncio.run(_precreate(base_url, key, count, concurrency=32))


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint under load: which server answers it and how wrk drives it."""

    name: str
    endpoint: str
    database: str
    server: Server
    url: str
    script: str
    script_args: tuple[str, ...]
    db_cpu_seconds: Callable[[], float] | None = None  # the database server's CPU, if known

    @property
    def slug(self) -> str:
        """For file names: "bare", "recordInfo", "createTask-pg"."""
        return "bare" if self.endpoint == "bare GET" else self.name.replace(" ", "-")


def run_wrk(
    target: Target,
    *,
    args: argparse.Namespace,
    duration_s: float,
    pin: Pinning,
    profile_to: Path | None = None,
) -> Result:
    command = [
        *pin.client_prefix,
        "wrk",
        "--latency",
        f"--threads={args.threads}",
        f"--connections={args.connections}",
        f"--duration={max(1, round(duration_s))}s",
        "--timeout=10s",
        f"--script={WRK_SCRIPTS / target.script}",
        target.url,
        "--",
        *target.script_args,
    ]
    profiler = None
    if profile_to is not None:
        # Sampling the server (all its threads) from the client's CPU, while wrk runs.
        sampler = [py_spy(), "record", "--pid", str(target.server.pid), *PY_SPY_OPTIONS]
        profiler = subprocess.Popen(
            [
                *pin.client_prefix,
                *sampler,
                *("--duration", str(max(1, round(duration_s)))),
                *("--format", "raw", "--output", str(profile_to)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    db_cpu = target.db_cpu_seconds or (lambda: 0.0)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = target.server.cpu_seconds()
    db_before = db_cpu()
    busy_before = cpu_busy_seconds(pin.server_cpu)
    client_busy_before = cpu_busy_seconds(pin.client_cpu)
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    busy_after = cpu_busy_seconds(pin.server_cpu)
    client_busy_after = cpu_busy_seconds(pin.client_cpu)
    server_after = target.server.cpu_seconds()
    db_after = db_cpu()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if profiler is not None:
        _, errors = profiler.communicate()
        if profiler.returncode != 0:
            raise BenchError(f"py-spy failed ({profiler.returncode}): {errors.decode()[-2000:]}")
    report = None
    first_bad = ""
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            report = json.loads(line.removeprefix("BENCH_JSON "))
        elif line.startswith("BENCH_FIRST_BAD "):
            first_bad = line.removeprefix("BENCH_FIRST_BAD ")
    if done.returncode != 0 or report is None:
        raise BenchError(
            f"wrk failed for {target.name} ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    client_cpu = (
        children_after.ru_utime
        + children_after.ru_stime
        - children_before.ru_utime
        - children_before.ru_stime
    )
    server_cpu = server_after - server_before
    db_cpu_s = db_after - db_before
    others = None
    if busy_before is not None and busy_after is not None:
        # The idle servers on the same CPU are counted as "others" too; they use next to
        # nothing. The database server the script started is ours, not the others'.
        others = max(0.0, busy_after - busy_before - server_cpu - db_cpu_s) / wall
    others_client = None
    if client_busy_before is not None and client_busy_after is not None:
        # This process (waiting on wrk) and a py-spy sampler count as "others" here.
        others_client = max(0.0, client_busy_after - client_busy_before - client_cpu) / wall
    errors = report["errors"]
    return Result(
        name=target.name,
        endpoint=target.endpoint,
        database=target.database,
        requests=report["requests"],
        duration_s=report["duration_us"] / 1e6,
        p50_ms=report["p50_us"] / 1000,
        p90_ms=report["p90_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        max_ms=report["max_us"] / 1000,
        sent=report["sent"],
        good=report["good"],
        bad=report["bad"],
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        server_cpu=server_cpu / wall,
        server_cpu_s=server_cpu,
        db_cpu=db_cpu_s / wall,
        db_cpu_s=db_cpu_s,
        client_cpu=client_cpu / wall,
        others_cpu=others,
        others_client_cpu=others_client,
        first_bad=first_bad,
    )


def run_round(
    targets: Sequence[Target],
    *,
    args: argparse.Namespace,
    pin: Pinning,
    profile: bool,
) -> tuple[list[Result], list[Result]]:
    """Each target in turn: a warm-up run (not reported, but its requests count for the
    durability check), then the measured run. Returns (measured, warm-ups)."""
    measured: list[Result] = []
    warmups: list[Result] = []
    for target in targets:
        if args.warmup > 0:
            warmups.append(run_wrk(target, args=args, duration_s=args.warmup, pin=pin))
        print(f"  measuring {target.name} for {args.duration:g} s ...", flush=True)
        profile_to = None
        if profile and args.profile is not None:
            profile_to = args.profile / f"{target.slug}.txt"
        measured.append(
            run_wrk(target, args=args, duration_s=args.duration, pin=pin, profile_to=profile_to)
        )
    return measured, warmups


# -- report ------------------------------------------------------------------------------


def disturbed(r: Result) -> bool:
    """Other processes took a share of the server's CPU, or starved wrk while the server had
    CPU to spare (then the client, not the server, set the pace)."""
    if (r.others_cpu or 0) > BUSY:
        return True
    return r.own_cpu < SATURATED and (r.others_client_cpu or 0) > BUSY


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> str:
    parts = [f"uvicorn {uvicorn.__version__}", f"fastapi {fastapi.__version__}"]
    parts.append(f"starlette {starlette.__version__}")
    for module in ("uvloop", "httptools"):
        try:
            imported = __import__(module)
            parts.append(f"{module} {imported.__version__}")
        except ImportError:
            parts.append(f"no {module}")
    return ", ".join(parts)


def code_version() -> str:
    """Which bananastand the servers run: its folder, and its git commit when in a checkout
    (with "+ local changes" when files under it differ from that commit)."""
    found = subprocess.run(
        [*bananastand_python(), "-c", "import bananastand; print(bananastand.__file__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0 or not found.stdout.strip():
        return "bananastand: not importable"
    package = Path(found.stdout.strip()).parent
    git = ["git", "-C", str(package)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return f"bananastand from {package}"
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "."], capture_output=True, text=True, check=False
    )
    changes = " + local changes" if dirty.stdout.strip() else ""
    return f"bananastand from {package}, git {head.stdout.strip()}{changes}"


def wrk_version() -> str:
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _ratio(top: float, bottom: float) -> float:
    return top / bottom if bottom else float("nan")


def twins(results: Sequence[Result]) -> dict[str, tuple[Result, Result | None]]:
    """For each result of a round: the bare run of that round, and SQLite's run of the same
    endpoint (None for the bare run and for SQLite's own)."""
    bare = next(r for r in results if r.endpoint == "bare GET")
    sqlite = {r.endpoint: r for r in results if r.database == "SQLite"}
    paired: dict[str, tuple[Result, Result | None]] = {}
    for r in results:
        twin = sqlite.get(r.endpoint) if r.database not in ("", "SQLite") else None
        paired[r.name] = (bare, twin)
    return paired


def print_round(results: Sequence[Result], *, databases: bool) -> None:
    """One round's table; ``databases``: show the columns that compare with SQLite."""
    paired = twins(results)
    header = (
        f"{'endpoint':<15} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'x bare':>6} "
    )
    if databases:
        header += f"{'x sqlite':>8} "
    header += f"{'CPU us/req':>10} "
    if databases:
        header += f"{'db us':>5} "
    header += f"{'x bare':>6} "
    if databases:
        header += f"{'x sqlite':>8} "
    header += f"{'good':>7} {'bad':>4} {'srv CPU':>7} "
    if databases:
        header += f"{'db CPU':>6} "
    header += f"{'wrk CPU':>7} {'others@srv':>10} {'others@wrk':>10}"
    print(header)
    print("-" * len(header))
    for r in results:
        bare, twin = paired[r.name]
        line = (
            f"{r.name:<15} {r.rps:>7.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.max_ms:>7.1f} "
            f"{_ratio(r.rps, bare.rps):>6.2f} "
        )
        if databases:
            line += f"{_ratio(r.rps, twin.rps):>8.2f} " if twin else f"{'':>8} "
        line += f"{r.cpu_us:>10.0f} "
        if databases:
            line += f"{r.db_us:>5.0f} " if r.db_cpu_s else f"{'':>5} "
        line += f"{_ratio(bare.cpu_us, r.cpu_us):>6.2f} "
        if databases:
            line += f"{_ratio(twin.cpu_us, r.cpu_us):>8.2f} " if twin else f"{'':>8} "
        line += f"{r.good:>7} {r.bad + r.socket_errors:>4} {_percent(r.server_cpu):>7} "
        if databases:
            line += f"{_percent(r.db_cpu) if r.db_cpu_s else '':>6} "
        line += (
            f"{_percent(r.client_cpu):>7} {_percent(r.others_cpu):>10} "
            f"{_percent(r.others_client_cpu):>10}"
        )
        print(line)


@dataclass(frozen=True, slots=True)
class Summary:
    """An endpoint's figures over the rounds: medians, and the range of the ratios (each
    round's run over the bare and SQLite runs of its own round, seconds apart)."""

    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    x_bare: list[float]
    cpu_x_bare: list[float]
    x_sqlite: list[float]  # empty for the bare endpoint and SQLite's own
    cpu_x_sqlite: list[float]


def summarise(rounds: Sequence[Sequence[Result]]) -> dict[str, Summary]:
    by_name: dict[str, list[tuple[Result, Result, Result | None]]] = {}
    for results in rounds:
        for name, (bare, twin) in twins(results).items():
            r = next(r for r in results if r.name == name)
            by_name.setdefault(name, []).append((r, bare, twin))
    summaries: dict[str, Summary] = {}
    for name, runs in by_name.items():
        summaries[name] = Summary(
            rps=statistics.median(r.rps for r, _, _ in runs),
            p50_ms=statistics.median(r.p50_ms for r, _, _ in runs),
            p99_ms=statistics.median(r.p99_ms for r, _, _ in runs),
            cpu_us=statistics.median(r.cpu_us for r, _, _ in runs),
            x_bare=[_ratio(r.rps, bare.rps) for r, bare, _ in runs],
            cpu_x_bare=[_ratio(bare.cpu_us, r.cpu_us) for r, bare, _ in runs],
            x_sqlite=[_ratio(r.rps, twin.rps) for r, _, twin in runs if twin],
            cpu_x_sqlite=[_ratio(twin.cpu_us, r.cpu_us) for r, _, twin in runs if twin],
        )
    return summaries


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if values else ""


def print_medians(summaries: dict[str, Summary], *, databases: bool) -> None:
    """The median of each figure over the rounds; a ratio is the median of the rounds'."""
    header = (
        f"{'endpoint':<15} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'x bare':>6} {'range':>11} "
    )
    if databases:
        header += f"{'x sqlite':>8} {'range':>11} "
    header += f"{'CPU us/req':>10} {'x bare':>6}"
    if databases:
        header += f" {'x sqlite':>8}"
    print(header)
    print("-" * len(header))
    for name, s in summaries.items():
        line = (
            f"{name:<15} {s.rps:>7.0f} {s.p50_ms:>7.2f} {s.p99_ms:>7.2f} "
            f"{_median(s.x_bare):>6.2f} {_spread(s.x_bare):>11} "
        )
        if databases:
            x_sqlite = f"{_median(s.x_sqlite):.2f}" if s.x_sqlite else ""
            line += f"{x_sqlite:>8} {_spread(s.x_sqlite):>11} "
        line += f"{s.cpu_us:>10.0f} {_median(s.cpu_x_bare):>6.2f}"
        if databases:
            cpu_x_sqlite = f"{_median(s.cpu_x_sqlite):.2f}" if s.cpu_x_sqlite else ""
            line += f" {cpu_x_sqlite:>8}"
        print(line)


# -- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark createTask and recordInfo against a bare FastAPI endpoint."
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds per endpoint")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--warmup", type=float, default=2, help="seconds of unreported load first (0: none)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat bare/recordInfo/createTask; report medians"
    )
    parser.add_argument("--tasks", type=int, default=1000, help="tasks recordInfo cycles through")
    parser.add_argument(
        "--synchronous",
        type=str.upper,
        choices=["FULL", "NORMAL"],
        default="FULL",
        help="BANANASTAND_SQLITE_SYNCHRONOUS for the server (FULL is its default)",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="also run on a throwaway PostgreSQL started here (initdb in a temporary folder, "
        "loopback port, fsync=on, synchronous_commit=on, on the servers' CPU), removed after",
    )
    parser.add_argument(
        "--against",
        metavar="GITREF",
        help="also run a SQLite server of the code at this commit (its src/ taken with git "
        "archive into the temporary folder), to compare a change with its base in one run",
    )
    parser.add_argument(
        "--database",
        action="append",
        default=[],
        metavar="URL",
        help="also run on this database (BANANASTAND_DATABASE_URL; repeatable). It must be "
        "the benchmark's alone: it is migrated, given a test key and its tasks counted",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folders")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="also sample the servers with py-spy during the first round's measured runs and "
        "write collapsed stacks to DIR/<endpoint>.txt (speedscope.app opens them); the "
        "sampler slows the server, so do not quote the numbers of a profiled run",
    )
    args = parser.parse_args(argv)
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    if args.tasks < 1 or args.rounds < 1 or args.duration < 1:
        parser.error("--tasks, --rounds and --duration must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "bench/api.py needs the `wrk` load generator, which is not installed.\n"
            "On Debian/Ubuntu: sudo apt-get install wrk   (macOS: brew install wrk)",
            file=sys.stderr,
        )
        return 2
    if args.profile is not None:
        py_spy()
        args.profile.mkdir(parents=True, exist_ok=True)
    # A SIGTERM unwinds like an exception: the servers and a local PostgreSQL are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    workdir = Path(tempfile.mkdtemp(prefix="bananastand-bench-"))
    try:
        # Unwound last in, first out: the servers stop before the database server they use.
        with contextlib.ExitStack() as stack:
            return run(args, workdir, stack)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"data kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def backends_of(
    args: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack, pin: Pinning
) -> list[Backend]:
    """SQLite in the data folder, then ``--postgres``'s server, then each ``--database``."""
    sqlite_dir = workdir / "data"
    backends = [
        Backend(
            "SQLite",
            "",
            f"sqlite:///{sqlite_dir / 'bananastand.db'}",
            f"SQLite synchronous={args.synchronous}, in the server's process, {sqlite_dir}",
            server_env(sqlite_dir, args.synchronous),
        )
    ]
    if args.against:
        backends.append(against_backend(args.against, workdir, args.synchronous))
    urls: list[tuple[str, LocalPostgres | None]] = []
    if args.postgres:
        try:
            local = stack.enter_context(
                running_postgres(free_port(), cpu=pin.server_cpu, keep=args.keep)
            )
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            raise BenchError(f"--postgres: {exc}") from exc
        query(local.url(), f'CREATE DATABASE "{BENCH_DATABASE}"', autocommit=True)
        urls.append((local.url(BENCH_DATABASE), local))
    urls += [(url, None) for url in args.database]
    postgres_seen = others_seen = 0
    for url, local in urls:
        if is_postgres(url):
            postgres_seen += 1
            number = "" if postgres_seen == 1 else str(postgres_seen)
            label, tag = f"PostgreSQL {number}".strip(), f"pg{number}"
            found = postgres_settings(url)
            describe = (
                f"PostgreSQL {found['server_version']} at {hide_password(url)}: "
                + ", ".join(f"{name}={found[name]}" for name in [*DURABLE, "wal_sync_method"])
            )
            if local is not None:
                where = f"CPU {local.cpu}" if local.cpu is not None else "any CPU (not pinned)"
                describe += (
                    f"; started here (folder {local.folder}) on {where}; its CPU counts as "
                    "the server's"
                )
            else:
                describe += "; not started here: its CPU is not counted (others@srv if local)"
            weak = [name for name, value in DURABLE.items() if found[name] != value]
            if weak:
                describe += f"\n    ! not durable ({', '.join(weak)} off): not comparable"
        else:
            others_seen += 1
            label, tag = f"database {others_seen + 1}", f"db{others_seen + 1}"
            describe = f"{hide_password(url)} (its CPU is not counted)"
        env = server_env(workdir / f"data-{tag}", args.synchronous, url)
        backends.append(Backend(label, tag, url, describe, env, local=local))
    return backends


def against_backend(ref: str, workdir: Path, synchronous: str) -> Backend:
    """SQLite served by the code of ``ref``: its ``src/`` exported beside the data folders and
    put first on the server's PYTHONPATH (the installed dependencies are this checkout's)."""
    source = workdir / "against"
    source.mkdir()
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", ref, "src"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise BenchError(f"--against {ref}: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", ref], capture_output=True, text=True
    ).stdout.strip()
    data_dir = workdir / "data-ref"
    env = server_env(data_dir, synchronous)
    env["PYTHONPATH"] = str(source / "src")
    return Backend(
        commit,
        "ref",
        f"sqlite:///{data_dir / 'bananastand.db'}",
        f"SQLite synchronous={synchronous}, the code of {ref} (git {commit}), {data_dir}",
        env,
    )


def start_backend(
    backend: Backend,
    args: argparse.Namespace,
    workdir: Path,
    pin: Pinning,
    stack: contextlib.ExitStack,
) -> None:
    """Its schema and key, its server (on the servers' CPU), the tasks recordInfo reads."""
    if is_postgres(backend.url):  # admin commands migrate an embedded SQLite file themselves
        migrate(backend.env)
    backend.key = create_key(backend.env)
    port = free_port()
    suffix = f"-{backend.tag}" if backend.tag else ""
    server = Server(
        f"bananastand serve ({backend.label})",
        [*pin.server_prefix, *bananastand_command(), "serve", "--no-worker", *listen(port)],
        backend.env,
        workdir / f"serve{suffix}.log",
    )
    stack.callback(server.stop)
    backend.server, backend.base = server, f"http://{HOST}:{port}"
    server.wait_ready(f"{backend.base}/healthz")
    print(f"  creating {args.tasks} tasks for recordInfo ({backend.label}) ...", flush=True)
    ids = precreate_tasks(backend.base, backend.key, args.tasks)
    backend.ids_file = workdir / f"task_ids{suffix}.txt"
    backend.ids_file.write_text("\n".join(ids) + "\n")
    backend.rows_before = count_tasks(backend.url)


def run(args: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack) -> int:
    extra = bool(args.postgres or args.database or args.against)
    pin = pinning(args.no_pin, database=args.postgres)
    print("bananastand API benchmark")
    print(f"  machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}")
    print(f"  {versions()}; {wrk_version()}")
    print(f"  {code_version()}")
    print(f"  {pin.note}")
    print(
        f"  wrk: {args.threads} thread(s), {args.connections} connections, "
        f"{args.duration:g} s per endpoint after {args.warmup:g} s warm-up, "
        f"{args.rounds} round(s)"
    )
    if args.profile is not None:
        print(f"  PROFILING with py-spy into {args.profile}: round 1's numbers are perturbed")
    backends = backends_of(args, workdir, stack, pin)
    for backend in backends:
        print(f"  server on {backend.label}: bananastand serve --no-worker; {backend.describe}")
    sys.stdout.flush()

    bare_port = free_port()
    bare = Server(
        "bare app",
        [*pin.server_prefix, sys.executable, str(HERE / "bare_app.py"), *listen(bare_port)],
        {k: v for k, v in os.environ.items() if not k.startswith("BANANASTAND_")},
        workdir / "bare.log",
    )
    stack.callback(bare.stop)
    for backend in backends:
        start_backend(backend, args, workdir, pin, stack)
    bare_base = f"http://{HOST}:{bare_port}"
    bare.wait_ready(f"{bare_base}/bare")

    # The same endpoint on each database one after the other, so that what disturbs one
    # run disturbs its twin alike.
    targets = [Target("bare GET", "bare GET", "", bare, f"{bare_base}/bare", "bare.lua", ())]
    for endpoint, path, script in [
        ("recordInfo", RECORD_PATH, "record_info.lua"),
        ("createTask", CREATE_PATH, "create_task.lua"),
    ]:
        for b in backends:
            assert b.server is not None
            assert b.ids_file is not None
            script_args = (b.key, str(b.ids_file) if endpoint == "recordInfo" else CREATE_BODY)
            targets.append(
                Target(
                    b.name(endpoint),
                    endpoint,
                    b.label,
                    b.server,
                    f"{b.base}{path}",
                    script,
                    script_args,
                    b.db_cpu_seconds(),
                )
            )
    rounds: list[list[Result]] = []
    all_runs: list[Result] = []
    probes: list[float] = []
    for number in range(1, args.rounds + 1):
        probe = speed_probe(pin)
        probes += [probe] if probe is not None else []
        if args.rounds > 1:
            print(f"  round {number} of {args.rounds}", flush=True)
        if probe is not None:
            print(f"  speed probe: {probe * 1000:.1f} ms", flush=True)
        measured, warmups = run_round(targets, args=args, pin=pin, profile=number == 1)
        rounds.append(measured)
        all_runs += measured + warmups

    # Durability: kill -9 every server at once, then count what the databases hold.
    for backend in backends:
        assert backend.server is not None
        backend.server.kill()
    for backend in backends:
        if backend.local is not None:
            backend.local.crash()
            try:
                backend.local.start()
            except RuntimeError as exc:
                raise BenchError(f"PostgreSQL did not start again after its crash: {exc}") from exc

    for number, measured in enumerate(rounds, 1):
        print()
        if args.rounds > 1:
            print(f"round {number}:")
        print_round(measured, databases=extra)
    print()
    print(
        "x bare: req/s over the bare endpoint's. CPU us/req: the server's CPU time per answer;"
        " its x bare\n(bare's CPU per answer over ours) estimates the req/s ratio on a quiet "
        "machine.\n"
        "srv CPU, wrk CPU: share of one CPU the server process and wrk used during the run.\n"
        "others@srv, others@wrk: share of the servers' CPU and of wrk's CPU that other "
        "processes took\nmeanwhile; when these are high the machine was busy and the numbers "
        "are disturbed."
    )
    if extra:
        print(
            "x sqlite: req/s over SQLite's run of the same endpoint in the same round; its CPU"
            " twin is SQLite's\nCPU per answer over this one's. For a PostgreSQL started here,"
            " CPU us/req includes its\nserver's processes (db us: their part; db CPU: their "
            "share of the servers' CPU), and they\nare not counted in others@srv."
        )
    summaries = summarise(rounds)
    if args.rounds > 1:
        print(
            f"\nmedian of {args.rounds} rounds (x bare, x sqlite: median of each round's ratio; "
            "range: lowest-highest round):"
        )
        print_medians(summaries, databases=extra)
    probe = speed_probe(pin)
    probes += [probe] if probe is not None else []
    if probes:
        cpu = f"CPU {pin.server_cpu}" if pin.server_cpu is not None else "any CPU"
        print(
            f"\nspeed probe (a fixed Python loop on {cpu} between rounds, servers idle): "
            f"{min(probes) * 1000:.1f}-{max(probes) * 1000:.1f} ms. Compare it with a quiet "
            "run's on this machine\n(docs/benchmarks.md): a slower probe means a slower CPU "
            "for every figure, even where others@srv\nreads 0 % (a VM's host busy with other "
            "guests does not show in /proc/stat)."
        )
    busy = [f"{r.name} (round {n})" for n, rnd in enumerate(rounds, 1) for r in rnd if disturbed(r)]
    if busy:
        print(
            f"\n! disturbed by other processes: {', '.join(busy)}.\n  Their req/s (a starved "
            "bare run most: it makes every ratio look better) are off;\n  CPU us/req hardly "
            "moves. Rerun on a quiet machine for req/s figures (--rounds helps)."
        )
    ok = True
    for r in all_runs:
        if r.bad or r.socket_errors:
            ok = False
            print(f"! {r.name}: {r.bad} bad answers, {r.socket_errors} socket errors {r.first_bad}")
    print()
    for name, aim in AIMS.items():
        ratio = _median(summaries[name].x_bare)
        verdict = "met" if ratio >= aim else "NOT met"
        print(f"aim {name} >= {aim:.1f} x bare req/s: {ratio:.2f} -> {verdict}")
    for backend in backends[1:]:
        if backend.tag == "ref":
            for endpoint in AIMS_VS_SQLITE:
                s = summaries[backend.name(endpoint)]
                print(
                    f"{endpoint}: the code at {backend.label} made "
                    f"{_median(s.x_sqlite):.2f} x this code's req/s (rounds "
                    f"{_spread(s.x_sqlite)}) and {_median(s.cpu_x_sqlite):.2f} x its CPU "
                    "efficiency: below 1.00, this code is faster"
                )
            continue
        for endpoint, aim in AIMS_VS_SQLITE.items():
            s = summaries[backend.name(endpoint)]
            ratio = _median(s.x_sqlite)
            verdict = "met" if ratio >= aim else "NOT met"
            print(
                f"aim {backend.name(endpoint)} >= {aim:.2f} x SQLite req/s: {ratio:.2f} -> "
                f"{verdict} (rounds {_spread(s.x_sqlite)}; CPU per answer: "
                f"{_median(s.cpu_x_sqlite):.2f} x SQLite's)"
            )
    durable = True
    for backend in backends:
        on_disk = count_tasks(backend.url) - backend.rows_before
        creates = [
            r for r in all_runs if r.endpoint == "createTask" and r.database == backend.label
        ]
        acknowledged = sum(r.good for r in creates)
        sent = sum(r.sent for r in creates)
        holds = acknowledged <= on_disk <= sent
        durable = durable and holds
        if backend.tag:
            how = backend.label
            if backend.local is not None:
                how += ", then its server stopped as a crash would and started again"
        else:
            how = f"SQLite, synchronous={args.synchronous}"
        print(
            f"durability after kill -9 ({how}): {on_disk} new rows in tasks; createTask "
            f"acknowledged {acknowledged} (code 200), sent {sent} -> "
            + ("OK" if holds else "FAILED")
            + (
                ""
                if on_disk == acknowledged
                else f" ({on_disk - acknowledged} in flight when wrk stopped were committed too)"
            )
        )
    return 0 if ok and durable else 1


if __name__ == "__main__":
    sys.exit(main())

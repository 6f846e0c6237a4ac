"""HTTP benchmark of createTask and recordInfo against a bare FastAPI endpoint, same run.

    .venv/bin/python bench/api.py [--duration 10] [--connections 32] [--threads 1]
                                  [--synchronous FULL|NORMAL] [--rounds 1] [--warmup 2]
                                  [--tasks 1000] [--profile DIR] [--no-pin] [--keep]

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

On a machine with two or more CPUs both servers are pinned to one CPU and wrk to another
(``taskset``), so the load generator is not what limits the numbers; the table shows the
CPU each side used, and how much of each CPU other processes took. It prints requests/s,
p50 and p99 per endpoint and the ratio of each to the bare endpoint measured in the same
run, and the server's CPU time per answer with the same ratio: on a shared machine req/s
swings with the neighbours' load while CPU per answer hardly moves. Results and the
machine are in docs/benchmarks.md. It never fails on speed; it exits 1 only when requests
failed or the durability check does not hold, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import fastapi
import httpx
import starlette
import uvicorn

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


class BenchError(Exception):
    """Something kept the benchmark from running; the message says what."""


@dataclass(frozen=True, slots=True)
class Result:
    name: str
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
    client_cpu: float  # cores wrk used, on average
    others_cpu: float | None  # share of the servers' CPU that other processes took
    others_client_cpu: float | None  # share of wrk's CPU that other processes took
    first_bad: str

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def cpu_us(self) -> float:
        """Server CPU per answered request, in microseconds: unlike req/s, it hardly moves
        when other processes take turns on the server's CPU."""
        return self.server_cpu_s / self.requests * 1e6 if self.requests else float("nan")


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


def server_env(data_dir: Path, synchronous: str) -> dict[str, str]:
    # Nothing of the caller's BANANASTAND_* settings leaks in: the run is the same anywhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANANASTAND_")}
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


def create_key(data_dir: Path, synchronous: str) -> str:
    done = subprocess.run(
        [*bananastand_command(), "keys", "create", "--test", "--name", "bench"],
        env=server_env(data_dir, synchronous),
        capture_output=True,
        text=True,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise BenchError(f"`bananastand keys create --test` failed:\n{done.stderr[-2000:]}")
    return lines[-1].strip()


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


def pinning(no_pin: bool) -> Pinning:
    """taskset prefixes for the servers and for wrk, and a sentence saying what was done."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin:
        return Pinning([], [], None, None, "not pinned (--no-pin): servers and wrk share CPUs")
    if len(cpus) < 2:
        return Pinning([], [], None, None, f"not pinned: only CPU {cpus} available")
    if shutil.which("taskset") is None:
        note = "not pinned: no `taskset` (apt-get install util-linux); results are noisier"
        return Pinning([], [], None, None, note)
    server, client = cpus[0], cpus[1]
    return Pinning(
        ["taskset", "-c", str(server)],
        ["taskset", "-c", str(client)],
        server,
        client,
        f"servers pinned to CPU {server}, wrk to CPU {client} (taskset)",
    )


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
    server: Server
    url: str
    script: str
    script_args: tuple[str, ...]


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
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = target.server.cpu_seconds()
    busy_before = cpu_busy_seconds(pin.server_cpu)
    client_busy_before = cpu_busy_seconds(pin.client_cpu)
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    busy_after = cpu_busy_seconds(pin.server_cpu)
    client_busy_after = cpu_busy_seconds(pin.client_cpu)
    server_after = target.server.cpu_seconds()
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
    others = None
    if busy_before is not None and busy_after is not None:
        # The idle server on the same CPU is counted as "others" too; it uses next to nothing.
        others = max(0.0, busy_after - busy_before - server_cpu) / wall
    others_client = None
    if client_busy_before is not None and client_busy_after is not None:
        # This process (waiting on wrk) and a py-spy sampler count as "others" here.
        others_client = max(0.0, client_busy_after - client_busy_before - client_cpu) / wall
    errors = report["errors"]
    return Result(
        name=target.name,
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
            profile_to = args.profile / f"{target.name.split()[0]}.txt"
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
    return r.server_cpu < SATURATED and (r.others_client_cpu or 0) > BUSY


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


def print_round(results: Sequence[Result]) -> None:
    bare = results[0]
    header = (
        f"{'endpoint':<12} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'x bare':>6} {'CPU us/req':>10} {'x bare':>6} {'good':>7} {'bad':>4} "
        f"{'srv CPU':>7} {'wrk CPU':>7} {'others@srv':>10} {'others@wrk':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = r.rps / bare.rps if bare.rps else float("nan")
        cpu_ratio = bare.cpu_us / r.cpu_us if r.cpu_us else float("nan")
        print(
            f"{r.name:<12} {r.rps:>7.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.max_ms:>7.1f} "
            f"{ratio:>6.2f} {r.cpu_us:>10.0f} {cpu_ratio:>6.2f} {r.good:>7} "
            f"{r.bad + r.socket_errors:>4} {_percent(r.server_cpu):>7} "
            f"{_percent(r.client_cpu):>7} {_percent(r.others_cpu):>10} "
            f"{_percent(r.others_client_cpu):>10}"
        )


def print_medians(rounds: Sequence[Sequence[Result]]) -> dict[str, float]:
    """The median of each figure over the rounds. A ratio pairs an endpoint with the bare
    run of its own round (the two ran seconds apart); returns the median ratio by name."""
    names = [r.name for r in rounds[0]]
    header = (
        f"{'endpoint':<12} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'x bare':>6} {'range':>11} "
        f"{'CPU us/req':>10} {'x bare':>6}"
    )
    print(header)
    print("-" * len(header))
    medians: dict[str, float] = {}
    for i, name in enumerate(names):
        rps = statistics.median(rnd[i].rps for rnd in rounds)
        p50 = statistics.median(rnd[i].p50_ms for rnd in rounds)
        p99 = statistics.median(rnd[i].p99_ms for rnd in rounds)
        ratios = [rnd[i].rps / rnd[0].rps if rnd[0].rps else float("nan") for rnd in rounds]
        medians[name] = statistics.median(ratios)
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        cpu = statistics.median(rnd[i].cpu_us for rnd in rounds)
        cpu_ratio = statistics.median(rnd[0].cpu_us / rnd[i].cpu_us for rnd in rounds)
        print(
            f"{name:<12} {rps:>7.0f} {p50:>7.2f} {p99:>7.2f} {medians[name]:>6.2f} {spread:>11} "
            f"{cpu:>10.0f} {cpu_ratio:>6.2f}"
        )
    return medians


def count_tasks(db_path: Path) -> int:
    # A plain sqlite3 connection replays the WAL the killed server left behind.
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return int(connection.execute("SELECT count(*) FROM tasks").fetchone()[0])
    finally:
        connection.close()


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
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder")
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
    workdir = Path(tempfile.mkdtemp(prefix="bananastand-bench-"))
    servers: list[Server] = []
    try:
        return run(args, workdir, servers)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        for server in servers:
            server.stop()
        if args.keep:
            print(f"data kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, workdir: Path, servers: list[Server]) -> int:
    pin = pinning(args.no_pin)
    data_dir = workdir / "data"
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
    print(f"  server: bananastand serve --no-worker, SQLite synchronous={args.synchronous}")
    print(f"  data folder: {data_dir}", flush=True)
    if args.profile is not None:
        print(f"  PROFILING with py-spy into {args.profile}: round 1's numbers are perturbed")

    key = create_key(data_dir, args.synchronous)
    port, bare_port = free_port(), free_port()
    ours = Server(
        "bananastand serve",
        [*pin.server_prefix, *bananastand_command(), "serve", "--no-worker", *listen(port)],
        server_env(data_dir, args.synchronous),
        workdir / "serve.log",
    )
    servers.append(ours)
    bare = Server(
        "bare app",
        [*pin.server_prefix, sys.executable, str(HERE / "bare_app.py"), *listen(bare_port)],
        {k: v for k, v in os.environ.items() if not k.startswith("BANANASTAND_")},
        workdir / "bare.log",
    )
    servers.append(bare)
    base, bare_base = f"http://{HOST}:{port}", f"http://{HOST}:{bare_port}"
    ours.wait_ready(f"{base}/healthz")
    bare.wait_ready(f"{bare_base}/bare")

    print(f"  creating {args.tasks} tasks for recordInfo ...", flush=True)
    ids = precreate_tasks(base, key, args.tasks)
    ids_file = workdir / "task_ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")

    targets = [
        Target("bare GET", bare, f"{bare_base}/bare", "bare.lua", ()),
        Target("recordInfo", ours, f"{base}{RECORD_PATH}", "record_info.lua", (key, str(ids_file))),
        Target("createTask", ours, f"{base}{CREATE_PATH}", "create_task.lua", (key, CREATE_BODY)),
    ]
    rounds: list[list[Result]] = []
    all_runs: list[Result] = []
    for number in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"  round {number} of {args.rounds}", flush=True)
        measured, warmups = run_round(targets, args=args, pin=pin, profile=number == 1)
        rounds.append(measured)
        all_runs += measured + warmups

    # Durability: kill -9 at once, then count what is on disk.
    ours.kill()
    on_disk = count_tasks(data_dir / "bananastand.db") - len(ids)
    creates = [r for r in all_runs if r.name == "createTask"]
    acknowledged = sum(r.good for r in creates)
    sent = sum(r.sent for r in creates)

    for number, measured in enumerate(rounds, 1):
        print()
        if args.rounds > 1:
            print(f"round {number}:")
        print_round(measured)
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
    if args.rounds > 1:
        print(
            f"\nmedian of {args.rounds} rounds (x bare: median of each round's ratio; "
            "range: lowest-highest round):"
        )
        ratios = print_medians(rounds)
    else:
        bare_rps = rounds[0][0].rps
        ratios = {r.name: r.rps / bare_rps if bare_rps else float("nan") for r in rounds[0]}
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
        ratio = ratios[name]
        verdict = "met" if ratio >= aim else "NOT met"
        print(f"aim {name} >= {aim:.1f} x bare req/s: {ratio:.2f} -> {verdict}")
    durable = acknowledged <= on_disk <= sent
    print(
        f"durability after kill -9 (synchronous={args.synchronous}): {on_disk} new rows in "
        f"tasks; createTask acknowledged {acknowledged} (code 200), sent {sent} -> "
        + ("OK" if durable else "FAILED")
        + (
            ""
            if on_disk == acknowledged
            else f" ({on_disk - acknowledged} in flight when wrk stopped were committed too)"
        )
    )
    return 0 if ok and durable else 1


if __name__ == "__main__":
    sys.exit(main())

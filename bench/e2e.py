"""End to end, side by side: ``bananastand serve`` against Cog's prediction server.

    .venv/bin/python bench/e2e.py --cog-python PEER/bin/python \
        [--tasks 600] [--warmup 100] [--outstanding 8,32] [--rounds 1] \
        [--worker-processes 1] [--server-cpus 0,1] [--client-cpus 0,1] [--upstream-cpus 0,1]

Both sides call the same fake of Google's ``generateContent`` (``bananastand fake-gemini``,
its own process) through the real google-genai SDK, for a 1K 1:1 PNG:

* ours: ``bananastand serve`` with 32 worker and upstream slots, no upstream pacing, no
  per-key rate limit, access log off, SQLite on its defaults (synchronous=FULL: a task says
  ``success`` only once its row and result file are on disk), ``--worker-processes``
  worker processes beside the API; a live key; createTask with a ``callBackUrl``.
* Cog (``pip install cog``, 0.23.1: a Rust HTTP server that runs a Python predictor): 32
  slots, an ``async def predict`` calling the fake through google-genai's async client and
  returning the image; ``POST /predictions`` with ``Prefer: respond-async`` and a
  completed-webhook. It has no queue: a 409 (every slot busy) is retried by the client.

Each server is booted fresh and alone; within a round the sides alternate, and the order
flips every round. One load client (this process) keeps K tasks outstanding, first for
``--warmup`` tasks unmeasured, then for ``--tasks`` measured ones, and receives the callbacks
itself (a bare asyncio HTTP/1.1 receiver, keep-alive). It prints tasks/s, send-to-callback
p50/p99/max, and the CPU per task of each server (all its processes: supervisor, API,
workers; Cog's Rust server and its Python child), of the load client and of the fake
upstream, read from /proc over the measured span, with the CPUs each was allowed.

After each of our runs the server is killed with SIGKILL and the data folder checked: every
task that was called back as ``success`` must have its row in state ``success`` and each of
its result files. A missing one makes the script exit 1.

A last row runs ours with a test key (the sandbox provider, no upstream). ``--api`` also runs
``bench/api.py`` (createTask and recordInfo against a bare endpoint) so that a regression of
the API shows in the same sitting.

Cog is not a dependency of bananastand: install it into a separate virtual environment
(``python3 -m venv PEER && PEER/bin/pip install cog google-genai pillow``, the same
google-genai version as ours for a fair race) and pass its python with ``--cog-python``.
Without it only our side runs. Cog writes into a fixed folder under the system temp dir, so
it runs in a private mount namespace (``unshare -m``, needs root) with a scratch folder
mounted over /tmp.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from _serve import HOST, bananastand, free_port, proc_stats, stop_process
from api import migrate

FAKE_KEY = "fake-key"
PROMPT = "a banana in sunglasses"
SLOTS = 32
TICKS = os.sysconf("SC_CLK_TCK")

PREDICTOR = '''\
"""Cog's side of bench/e2e.py: the fake upstream through google-genai's async client."""

import os
import tempfile

from cog import BasePredictor, Path
from google import genai
from google.genai import types


class Predictor(BasePredictor):
    def setup(self) -> None:
        self.client = genai.Client(
            api_key=os.environ["GEMINI_API_KEY"],
            http_options=types.HttpOptions(base_url=os.environ["GOOGLE_GEMINI_BASE_URL"]),
        )
        self.config = types.GenerateContentConfig(
            response_modalities=["IMAGE"],
            image_config=types.ImageConfig(aspect_ratio="1:1", image_size="1K"),
        )

    async def predict(self, prompt: str) -> Path:
        answer = await self.client.aio.models.generate_content(
            model="gemini-3-pro-image", contents=prompt, config=self.config
        )
        for part in answer.candidates[0].content.parts:
            if part.inline_data is not None and not part.thought:
                fd, name = tempfile.mkstemp(suffix=".png")
                with os.fdopen(fd, "wb") as out:
                    out.write(part.inline_data.data)
                return Path(name)
        raise RuntimeError("the upstream answered without an image")
'''


# --------------------------------------------------------------------------- processes


def cpus(text: str | None) -> set[int] | None:
    return None if not text else {int(cpu) for cpu in text.split(",")}


def describe_cpus(allowed: set[int] | None) -> str:
    return "any" if allowed is None else ",".join(str(cpu) for cpu in sorted(allowed))


def pinned(allowed: set[int] | None) -> Callable[[], None] | None:
    if allowed is None:
        return None
    return lambda: os.sched_setaffinity(0, allowed)


def process_tree(root: int) -> dict[int, list[str]]:
    """``root`` and every live descendant: pid -> the fields of its /proc stat after the
    command name (``fields[1]`` is the parent, ``fields[11:13]`` user and system ticks)."""
    stats = proc_stats()
    tree: dict[int, list[str]] = {}
    for pid, fields in stats.items():
        walk = pid
        while walk not in (0, 1) and walk != root:
            walk = int(stats[walk][1]) if walk in stats else 0
        if walk == root:
            tree[pid] = fields
    return tree


def tree_cpu_s(root: int | None) -> float:
    """User + system CPU seconds of ``root`` and every live descendant (0: no root)."""
    if root is None:
        return 0.0
    return sum(int(f[11]) + int(f[12]) for f in process_tree(root).values()) / TICKS


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, ready: str = "") -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(httpx.HTTPError):
            answer = httpx.get(url, timeout=1)
            if answer.status_code == 200 and ready in answer.text:
                return
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{url} did not come up; its log: {log}\n{log.read_text()[-2000:]}")


@contextlib.contextmanager
def fake_upstream(
    workdir: Path, allowed: set[int] | None, command: Sequence[str] = ()
) -> Iterator[tuple[str, int]]:
    """(base URL, pid) of a fake Google in its own process: ``bananastand fake-gemini``, or
    ``command`` (given ``--port``), which prints the same line once it listens."""
    port = free_port()
    log = workdir / "fake-gemini.log"
    fake = command or [*bananastand(), "fake-gemini", "--api-key", FAKE_KEY]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*fake, "--port", str(port)],
            stdout=out,
            stderr=out,
            preexec_fn=pinned(allowed),
        )
    try:
        base = f"http://{HOST}:{port}"
        deadline = time.monotonic() + 60
        while "fake Gemini API on" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the fake upstream did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield base, process.pid
    finally:
        process.terminate()
        process.wait(30)


# --------------------------------------------------------------------------- the two sides


@dataclass
class Side:
    """One server under test: how to start it, submit a task and read its callback."""

    name: str
    process: subprocess.Popen[bytes] | None = None
    base: str = ""
    data_dir: Path | None = None

    def start(self, workdir: Path, upstream: str, hook_url: str) -> None:
        raise NotImplementedError

    async def submit(self, client: httpx.AsyncClient, hook_url: str) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class Ours(Side):
    worker_processes: int = 1
    test_key: bool = False
    allowed: set[int] | None = None
    key: str = ""
    #: Settings over the defaults below (a database URL, other slot counts).
    extra: dict[str, str] = field(default_factory=dict)

    def settings(self, upstream: str) -> dict[str, str]:
        return {
            "BANANASTAND_ALLOW_PRIVATE_NETWORKS": HOST,
            "BANANASTAND_ACCESS_LOG": "false",
            "BANANASTAND_LOG_LEVEL": "WARNING",
            "BANANASTAND_CREATE_RATE": "unlimited",
            "BANANASTAND_READ_RATE": "unlimited",
            "BANANASTAND_MAX_WAITING_TASKS": "0",
            "BANANASTAND_WORKER_CONCURRENCY": str(SLOTS),
            "BANANASTAND_UPSTREAM_CONCURRENCY": str(SLOTS),
            "BANANASTAND_UPSTREAM_REQUESTS_PER_MINUTE": "0",
            "BANANASTAND_WORKER_PROCESSES": str(self.worker_processes),
            "BANANASTAND_LIVE_PROVIDER": "gemini",
            "GEMINI_API_KEY": FAKE_KEY,
            "GOOGLE_GEMINI_BASE_URL": upstream,
        }

    def start(self, workdir: Path, upstream: str, hook_url: str) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="ours-", dir=workdir))
        port = free_port()
        env = {
            **os.environ,
            **self.settings(upstream),
            "BANANASTAND_DATA_DIR": str(self.data_dir),
            "BANANASTAND_PORT": str(port),
            "BANANASTAND_STARTING_CREDITS": str(10**9),
            **self.extra,
        }
        migrate(env)  # keys create migrates SQLite only
        made = subprocess.run(
            [*bananastand(), "keys", "create", *(["--test"] if self.test_key else [])],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        self.key = made.stdout.strip().splitlines()[-1]
        log = self.data_dir / "serve.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [*bananastand(), "serve"],
                env=env,
                stdout=out,
                stderr=out,
                preexec_fn=pinned(self.allowed),
            )
        self.base = f"http://{HOST}:{port}"
        wait_ready(f"{self.base}/readyz", self.process, log)

    async def submit(self, client: httpx.AsyncClient, hook_url: str) -> str:
        answer = await client.post(
            f"{self.base}/api/v1/jobs/createTask",
            json={"model": "nano-banana-pro", "input": {"prompt": PROMPT}, "callBackUrl": hook_url},
            headers={"Authorization": f"Bearer {self.key}"},
        )
        body = answer.json()
        if body.get("code") != 200:
            raise RuntimeError(f"createTask answered {body}")
        return str(body["data"]["taskId"])

    def kill_and_check(self, succeeded: set[str]) -> tuple[int, list[str]]:
        """SIGKILL the whole server, then every task called back as ``success`` must have
        its row and its files; returns (tasks checked, what is missing)."""
        assert self.process is not None
        assert self.data_dir is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        time.sleep(0.5)  # the worker children die with their parent (PR_SET_PDEATHSIG)
        missing: list[str] = []
        database = sqlite3.connect(self.data_dir / "bananastand.db")
        try:
            rows = dict(database.execute("SELECT id, state || ' ' || result_keys FROM tasks"))
        finally:
            database.close()
        for task_id in succeeded:
            row = rows.get(task_id)
            if row is None or not row.startswith("success "):
                missing.append(f"{task_id}: row {row!r}")
                continue
            for key in json.loads(row.split(" ", 1)[1] or "[]"):
                if not (self.data_dir / "files" / key).is_file():
                    missing.append(f"{task_id}: file {key}")
        return len(succeeded), missing


@dataclass
class Cog(Side):
    python: Path = Path()
    allowed: set[int] | None = None

    def start(self, workdir: Path, upstream: str, hook_url: str) -> None:
        # The scratch folder is mounted over /tmp in Cog's namespace: the model folder goes
        # inside it so that it stays reachable (as /tmp/model) once the mount hides /tmp.
        scratch = Path(tempfile.mkdtemp(prefix="cog-", dir=workdir))
        model = scratch / "model"
        model.mkdir()
        (model / "predict.py").write_text(PREDICTOR)
        port = free_port()
        venv_bin = str(self.python.parent)
        env = {
            **os.environ,
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
            "PORT": str(port),
            "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
            "COG_MAX_CONCURRENCY": str(SLOTS),
            "GEMINI_API_KEY": FAKE_KEY,
            "GOOGLE_GEMINI_BASE_URL": upstream,
        }
        server = f"exec {self.python} -m cog.server.http --host {HOST}"
        log = model / "cog.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    "unshare",
                    "-m",
                    "sh",
                    "-c",
                    f"mount --bind {scratch} /tmp && cd /tmp/model && {server}",
                ],
                env=env,
                stdout=out,
                stderr=out,
                preexec_fn=pinned(self.allowed),
            )
        self.base = f"http://{HOST}:{port}"
        wait_ready(f"{self.base}/health-check", self.process, log, ready='"READY"')

    async def submit(self, client: httpx.AsyncClient, hook_url: str) -> str:
        body = {
            "input": {"prompt": PROMPT},
            "webhook": hook_url,
            "webhook_events_filter": ["completed"],
        }
        while True:
            answer = await client.post(
                f"{self.base}/predictions", json=body, headers={"Prefer": "respond-async"}
            )
            if answer.status_code != 409:  # 409: every slot busy; Cog has no queue
                break
            await asyncio.sleep(0.002)
        if answer.status_code >= 300:
            raise RuntimeError(f"POST /predictions answered {answer.status_code}: {answer.text}")
        return str(answer.json()["id"])


# --------------------------------------------------------------------------- the load client


@dataclass
class Hooks:
    """The callback receiver: taskId -> (arrival time, whether it succeeded)."""

    port: int = field(default_factory=free_port)
    #: How long one task may take from its creation to its callback.
    patience_s: float = 120.0
    arrived: dict[str, tuple[float, bool]] = field(default_factory=dict)
    waiting: dict[str, asyncio.Future[tuple[float, bool]]] = field(default_factory=dict)
    duplicates: int = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hook"

    async def serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._connection, HOST, self.port, backlog=1024)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                _, _, body = await read_request(reader)
                self._record(json.loads(body), time.perf_counter())
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the sender closed, or the run is over and the receiver stops
        finally:
            writer.close()

    def _record(self, body: dict[str, object], at: float) -> None:
        data = body.get("data")
        if isinstance(data, dict):  # ours: the jobs API's envelope
            task_id, ok = str(data["taskId"]), data.get("state") == "success"
        else:  # Cog: the prediction itself
            task_id, ok = str(body["id"]), body.get("status") == "succeeded"
        if task_id in self.arrived:
            self.duplicates += 1
            return
        self.arrived[task_id] = (at, ok)
        future = self.waiting.pop(task_id, None)
        if future is not None:
            future.set_result((at, ok))

    async def wait(self, task_id: str) -> tuple[float, bool]:
        if task_id in self.arrived:
            return self.arrived[task_id]
        future = asyncio.get_running_loop().create_future()
        self.waiting[task_id] = future
        return await asyncio.wait_for(future, self.patience_s)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One HTTP/1.1 request off a keep-alive connection: (request line, headers by lower-case
    name, body); raises ``asyncio.IncompleteReadError`` once the sender has closed."""
    head = await reader.readuntil(b"\r\n\r\n")
    first, *lines = head[:-4].split(b"\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in lines)
    }
    if headers.get(b"transfer-encoding") == b"chunked":
        return first, headers, await _chunked(reader)
    return first, headers, await reader.readexactly(int(headers.get(b"content-length", b"0")))


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return body
        body += chunk[:-2]


@dataclass
class Run:
    side: str
    outstanding: int
    tasks: int
    seconds: float
    latencies_ms: list[float]
    failed: int
    server_cpu_s: float
    client_cpu_s: float
    upstream_cpu_s: float
    succeeded: set[str]
    durability: str = ""

    def at(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def p99_ms(self) -> float:
        return self.at(0.99)

    def row(self) -> str:

        per_task = 1000 / max(1, self.tasks)
        rate = self.tasks / self.seconds
        return (
            f"{self.side:<22} {self.outstanding:>3} {self.tasks:>5} {rate:>8.1f} "
            f"{self.at(0.5):>7.1f} {self.p99_ms:>7.1f} {max(self.latencies_ms):>7.1f} "
            f"{self.server_cpu_s * per_task:>8.2f} {self.client_cpu_s * per_task:>8.2f} "
            f"{self.upstream_cpu_s * per_task:>8.2f} {self.failed:>5}  {self.durability}"
        )


HEADER = (
    f"{'server':<22} {'K':>3} {'tasks':>5} {'tasks/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
    f"{'max ms':>7} {'srv ms/t':>8} {'cli ms/t':>8} {'up ms/t':>8} {'fail':>5}  after kill -9"
)


async def drive(
    side: Side, hooks: Hooks, outstanding: int, count: int, upstream_pid: int | None, label: str
) -> Run:
    """Keep ``outstanding`` tasks in flight until ``count`` have been called back
    (``upstream_pid``: the fake upstream whose CPU is counted, if any)."""
    assert side.process is not None
    # Idle connections are dropped before a server's keep-alive timeout (uvicorn's is 5 s)
    # could close one just as it is reused: on a busy machine that race was a ReadError.
    limits = httpx.Limits(
        max_connections=outstanding * 2,
        max_keepalive_connections=outstanding * 2,
        keepalive_expiry=2.0,
    )
    latencies: list[float] = []
    succeeded: set[str] = set()
    failed = 0
    sent = 0
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def slot() -> None:
            nonlocal sent, failed
            while sent < count:
                sent += 1
                began = time.perf_counter()
                task_id = await side.submit(client, hooks.url)
                at, ok = await hooks.wait(task_id)
                latencies.append((at - began) * 1000)
                if ok:
                    succeeded.add(task_id)
                else:
                    failed += 1

        server_0 = tree_cpu_s(side.process.pid)
        upstream_0, client_0 = tree_cpu_s(upstream_pid), self_cpu_s()
        began = time.perf_counter()
        await asyncio.gather(*(slot() for _ in range(outstanding)))
        seconds = time.perf_counter() - began
        server_cpu = tree_cpu_s(side.process.pid) - server_0
        upstream_cpu, client_cpu = tree_cpu_s(upstream_pid) - upstream_0, self_cpu_s() - client_0
    return Run(
        label,
        outstanding,
        count,
        seconds,
        latencies,
        failed,
        server_cpu,
        client_cpu,
        upstream_cpu,
        succeeded,
    )


@contextlib.contextmanager
def sampled(side: Side, folder: Path | None, name: str) -> Iterator[None]:
    """With ``--profile``: py-spy samples the server's processes (those holding the GIL,
    i.e. spending CPU in Python) into ``folder/name.txt``, as collapsed stacks."""
    if folder is None or side.process is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    out = folder / f"{name}.txt"
    command = [spy, "record", "--subprocesses", "--gil", "-r", "250", "-f", "raw", "-o", str(out)]
    sampler = subprocess.Popen(
        [*command, "-p", str(side.process.pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)
        sampler.wait(60)
        print(f"  profile: {out}", flush=True)


@contextlib.asynccontextmanager
async def started(
    side: Side, workdir: Path, upstream: str, hooks: Hooks | None = None
) -> AsyncIterator[Hooks]:
    """``side`` running against ``upstream``, calling back to ``hooks`` (a new receiver
    when None); stopped, and the receiver closed, when the block ends."""
    hooks = hooks or Hooks()
    receiver = await hooks.serve()
    try:
        await asyncio.to_thread(side.start, workdir, upstream, hooks.url)
        try:
            yield hooks
        finally:
            side.stop()
    finally:
        receiver.close()


async def measure(
    side: Side,
    args: argparse.Namespace,
    workdir: Path,
    upstream: tuple[str, int],
    outstanding: int,
    label: str,
) -> Run:
    async with started(side, workdir, upstream[0]) as hooks:
        await drive(side, hooks, outstanding, args.warmup, upstream[1], label)
        with sampled(side, args.profile, f"{label}-k{outstanding}"):
            run = await drive(side, hooks, outstanding, args.tasks, upstream[1], label)
        if isinstance(side, Ours):
            checked, missing = side.kill_and_check(run.succeeded)
            run.durability = (
                f"{checked} success rows+files present"
                if not missing
                else f"MISSING {len(missing)}: {missing[:3]}"
            )
        if hooks.duplicates:
            run.durability += f"; {hooks.duplicates} callbacks twice"
        return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cog-python", type=Path, help="python of a venv with cog installed")
    parser.add_argument("--tasks", type=int, default=600, help="measured tasks per run")
    parser.add_argument("--warmup", type=int, default=100, help="unmeasured tasks first")
    parser.add_argument("--outstanding", default="8,32", help="K values, comma-separated")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--worker-processes", type=int, default=1)
    parser.add_argument("--server-cpus", help="pin the servers, e.g. 0,1 (default: any)")
    parser.add_argument("--client-cpus", help="pin this load client (default: any)")
    parser.add_argument("--upstream-cpus", help="pin the fake upstream (default: any)")
    parser.add_argument("--no-sandbox", action="store_true", help="skip the test-key run")
    parser.add_argument("--keep", action="store_true", help="keep the data folders and logs")
    parser.add_argument("--api", action="store_true", help="also run bench/api.py --duration 5")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the servers with py-spy (pip install py-spy) during the measured runs; "
        "the sampler costs CPU, so do not quote the figures of a profiled run",
    )
    args = parser.parse_args()
    server_cpus, upstream_cpus = cpus(args.server_cpus), cpus(args.upstream_cpus)
    if args.client_cpus:
        os.sched_setaffinity(0, cpus(args.client_cpus) or set())
    ks = [int(k) for k in args.outstanding.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    print(
        f"{args.tasks} measured tasks a run after {args.warmup}; {SLOTS} slots each side; "
        f"ours with --worker-processes {args.worker_processes}; CPUs: servers "
        f"{describe_cpus(server_cpus)}, load client {describe_cpus(cpus(args.client_cpus))}, "
        f"fake upstream {describe_cpus(upstream_cpus)} (of {os.cpu_count()})"
    )
    print("ms/t: CPU milliseconds per task (server: all its processes, from /proc)")
    failed = False
    runs: list[Run] = []
    try:
        with fake_upstream(workdir, upstream_cpus) as upstream:
            print(HEADER)
            for number in range(args.rounds):
                for k in ks:
                    sides: list[tuple[Side, str]] = [
                        (
                            Ours(
                                "ours", worker_processes=args.worker_processes, allowed=server_cpus
                            ),
                            "bananastand",
                        )
                    ]
                    if args.cog_python:
                        sides.append(
                            (Cog("cog", python=args.cog_python, allowed=server_cpus), "cog")
                        )
                    if number % 2:
                        sides.reverse()
                    for side, label in sides:
                        run = asyncio.run(measure(side, args, workdir, upstream, k, label))
                        runs.append(run)
                        print(run.row(), flush=True)
                        failed |= "MISSING" in run.durability or "twice" in run.durability
            if not args.no_sandbox:
                sandbox = Ours(
                    "ours",
                    worker_processes=args.worker_processes,
                    test_key=True,
                    allowed=server_cpus,
                )
                run = asyncio.run(
                    measure(sandbox, args, workdir, upstream, ks[-1], "bananastand sandbox")
                )
                print(run.row(), flush=True)
                failed |= "MISSING" in run.durability
        print_ratios(runs, ks)
        if args.api:
            print("\nbench/api.py --duration 5:", flush=True)
            api = Path(__file__).with_name("api.py")
            subprocess.run([sys.executable, str(api), "--duration", "5"], check=False)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def print_ratios(runs: list[Run], ks: list[int]) -> None:
    for k in ks:
        ours = [r for r in runs if r.side == "bananastand" and r.outstanding == k]
        cog = [r for r in runs if r.side == "cog" and r.outstanding == k]
        if not ours or not cog:
            continue
        rate = statistics.median(r.tasks / r.seconds for r in ours) / statistics.median(
            r.tasks / r.seconds for r in cog
        )
        ours_p99 = statistics.median(r.p99_ms for r in ours)
        cog_p99 = statistics.median(r.p99_ms for r in cog)
        print(
            f"K={k}: ours/cog tasks/s {rate:.2f}x; p99 ours {ours_p99:.0f} ms, cog {cog_p99:.0f} ms"
        )


if __name__ == "__main__":
    sys.exit(main())

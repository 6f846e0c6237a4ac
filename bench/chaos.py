"""Nothing lost under faults: a cluster of bananastand processes, killed while it works.

    .venv/bin/python bench/chaos.py [--tasks 1000] [--postgres] [--seed 1]

Two API processes (``serve --no-worker``) and three ``bananastand worker`` processes on one
database (a fresh SQLite file in WAL mode, or with ``--postgres`` a throwaway local
PostgreSQL), files on local disk shared by all, run ``--tasks`` tasks of a live key (on the
sandbox provider, so that credits are charged) submitted across both APIs, each with an
Idempotency-Key and a ``callBackUrl``: 60 % instant, 30 % taking 0.2-2 s, 10 % that the
sandbox is told to fail (failCode 400). Meanwhile:

* a worker (one that is up) is SIGKILLed every 1-3 s, at random, and started again
  at once;
* the second API is SIGKILLed and started again twice (a third and two thirds in);
* on PostgreSQL, every connection to the database is terminated once (half way);
* the callback receiver answers 500 to 10 % of first deliveries and hangs past the
  sender's timeout on 2 % of them.

Leases are short (3 s) and a task may be claimed up to 100 times, so the kill rate cannot
use up its attempts; a task that ran out anyway is counted apart, with its failMsg.
A client whose request failed (a killed API, a connection cut) sends it again, with the
same Idempotency-Key, to the other API.

At the end it checks, and prints the counts of: tasks final and right (``success``, or
``fail`` with 400 where the sandbox was told to), duplicates (one task per
Idempotency-Key, no more rows than keys), callbacks received with a valid signature and
the task's final state, results downloadable (a PNG behind every link), ``credits audit``
clean, and the balance exact (start - price x successes). Exit status 1 when anything is
off. ``tests/test_chaos.py`` runs the same with a small ``--tasks`` on both databases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.pool import NullPool
from standardwebhooks import Webhook, WebhookVerificationError

from _serve import HOST, bananastand, free_port, stop_process
from bananastand.store.tables import tasks as tasks_table

MODEL = "nano-banana-pro"
PRICE = 18  # nano-banana-pro at 1K, the default price table
START_CREDITS = 1_000_000
WEBHOOK_TIMEOUT_S = 1.0
SETTINGS = {
    "BANANASTAND_LIVE_PROVIDER": "sandbox",  # live keys, charged, on the sandbox
    "BANANASTAND_ALLOW_PRIVATE_NETWORKS": HOST,
    "BANANASTAND_LOG_FORMAT": "json",
    "BANANASTAND_ACCESS_LOG": "false",
    "BANANASTAND_LEASE_SECONDS": "3",
    "BANANASTAND_MAX_ATTEMPTS": "100",
    "BANANASTAND_POLL_INTERVAL_SECONDS": "0.5",
    "BANANASTAND_WORKER_HEARTBEAT_SECONDS": "1",
    "BANANASTAND_WORKER_CONCURRENCY": "16",
    # A killed worker holds its upstream slots until they expire (30 s with Redis): with
    # kills every 1-3 s a tight budget would stall the run (it would lose nothing).
    "BANANASTAND_UPSTREAM_CONCURRENCY": "100000",
    "BANANASTAND_UPSTREAM_REQUESTS_PER_MINUTE": "0",
    "BANANASTAND_CREATE_RATE": "unlimited",
    "BANANASTAND_READ_RATE": "unlimited",
    "BANANASTAND_MAX_WAITING_TASKS": "0",
    "BANANASTAND_STARTING_CREDITS": str(START_CREDITS),
    "BANANASTAND_WEBHOOK_TIMEOUT_SECONDS": str(WEBHOOK_TIMEOUT_S),
    "BANANASTAND_WEBHOOK_RETRY_SCHEDULE_SECONDS": "0,0.5,1,1,1,2,2,2,2,2,2,2,2,2,2",
    "BANANASTAND_SIGNING_SECRET": "chaos-signing-secret",
}


def kind_of(index: int) -> str:
    """60 % instant, 30 % slow, 10 % told to fail, spread evenly over the run."""
    return "fail" if index % 10 == 9 else "slow" if index % 10 >= 6 else "instant"


def prompt_of(index: int, kind: str, rng: random.Random) -> str:
    base = f"chaos task {index}"
    if kind == "slow":
        return f"{base} [sandbox:delay={rng.randint(200, 2000)}]"
    if kind == "fail":
        return f"{base} [sandbox:fail=input]"
    return base


def first_answer(arrival: int) -> str:
    """How the receiver answers the ``arrival``-th first delivery (counting from 1): every
    fiftieth hangs, every tenth fails (exactly 2 % and 10 %), the rest get a 200."""
    return "hang" if arrival % 50 == 25 else "fail" if arrival % 10 == 5 else "ok"


# --------------------------------------------------------------------------- processes


@dataclass
class Role:
    """One bananastand process of the cluster, started again on the same port."""

    name: str
    args: list[str]
    env: dict[str, str]
    logs: Path
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        env = {**self.env, **({"BANANASTAND_PORT": str(self.port)} if self.port else {})}
        self.starts += 1
        with (self.logs / f"{self.name}-{self.starts}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [*bananastand(), *self.args], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} was not ready within {timeout:g} s")

    def running(self) -> bool:
        """Whether this start of a worker got as far as taking tasks (it logs so)."""
        log = self.logs / f"{self.name}-{self.starts}.log"
        return self.process is not None and "worker started" in log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def stop(self) -> None:
        stop_process(self.process)


# --------------------------------------------------------------------------- the receiver


@dataclass
class Receiver:
    """Records every callback body by task; answers first deliveries by `first_answer`."""

    secret: str = ""
    bodies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    answered_ok: set[str] = field(default_factory=set)
    bad_signatures: int = 0
    #: Why each of the first bad signatures failed verification.
    rejected: list[str] = field(default_factory=list)
    first_deliveries: int = 0
    hung: int = 0
    failed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{HOST}:{self._server.server_address[1]}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                if len(raw) < length:
                    return  # the sender was killed mid-request: nothing was delivered
                status = receiver.receive(raw, dict(self.headers.items()))
                with contextlib.suppress(OSError):  # a sender that timed out hung up
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self._server = Server((HOST, 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def receive(self, raw: bytes, headers: dict[str, str]) -> int:
        try:
            body: dict[str, Any] = Webhook(self.secret).verify(raw, headers)
        except WebhookVerificationError as exc:
            with self._lock:
                self.bad_signatures += 1
                self.rejected.append(f"{exc}: {headers.get('webhook-id')} {raw[:120]!r}")
            return 400
        task_id = str(body["data"]["taskId"])
        with self._lock:
            answer = "ok"
            if task_id not in self.bodies:
                self.first_deliveries += 1
                answer = first_answer(self.first_deliveries)
            self.bodies.setdefault(task_id, []).append(body)
            if answer == "hang":
                self.hung += 1
            elif answer == "fail":
                self.failed += 1
        if answer == "hang":
            time.sleep(WEBHOOK_TIMEOUT_S * 2)
            return 200  # too late: the sender gave up and tries again
        if answer == "fail":
            return 500
        with self._lock:
            self.answered_ok.add(task_id)
        return 200

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


# --------------------------------------------------------------------------- the run


@dataclass
class Plan:
    tasks: int
    data_dir: Path
    #: Empty: the embedded SQLite file in ``data_dir``.
    database_url: str = ""
    #: More environment for every process (Redis, S3: the deployment's topology).
    settings: dict[str, str] = field(default_factory=dict)
    seed: int = 1
    #: Workers killed at most this many times (None: until every task has ended). Each
    #: kill sends the dead worker's claimed tasks round again after their lease: on a
    #: busy 2-core machine, where a worker takes seconds to boot, unbounded kills kept the
    #: last tasks bouncing for minutes. The test caps them; the benchmark does not.
    worker_kills: int | None = None
    #: Seconds to wait for every task to end and every callback to arrive.
    settle_timeout: float = 300.0
    say: Callable[[str], None] = print


@dataclass
class Report:
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"{name:<34} {value}" for name, value in self.counts.items()] + [
            f"PROBLEM: {problem}" for problem in self.problems
        ]


@dataclass
class Cluster:
    apis: list[Role]
    workers: list[Role]
    plan: Plan
    submitted: int = 0
    kills: dict[str, int] = field(default_factory=lambda: {"worker": 0, "api": 0, "pg": 0})
    stop: threading.Event = field(default_factory=threading.Event)

    def chaos(self) -> None:
        """Kill a worker every 1-3 s; the second API at a third and two thirds of the
        submissions; every PostgreSQL connection once, half way."""
        rng = random.Random(self.plan.seed)
        api_kills_at = [self.plan.tasks // 3, 2 * self.plan.tasks // 3]
        terminate_at = self.plan.tasks // 2 if self.plan.database_url else None
        next_worker_kill = time.monotonic() + rng.uniform(1, 3)
        restarting = threading.Thread()
        while not self.stop.wait(0.05):
            if api_kills_at and self.submitted >= api_kills_at[0] and not restarting.is_alive():
                api_kills_at.pop(0)
                # Started again in a thread of its own: the workers' kills go on meanwhile.
                restarting = threading.Thread(target=self._restart_api, daemon=True)
                restarting.start()
            if terminate_at is not None and self.submitted >= terminate_at:
                terminate_at = None
                self.kills["pg"] += terminate_connections(self.plan.database_url)
            # Only a worker that is up: one killed while it boots (seconds of imports on a
            # busy machine) would leave the cluster without workers, not test it.
            running = [worker for worker in self.workers if worker.running()]
            kills_left = (
                self.plan.worker_kills is None or self.kills["worker"] < self.plan.worker_kills
            )
            if time.monotonic() >= next_worker_kill and running and kills_left:
                victim = rng.choice(running)
                victim.kill()
                self.kills["worker"] += 1
                victim.start()
                next_worker_kill = time.monotonic() + rng.uniform(1, 3)
        if restarting.is_alive():
            restarting.join()

    def _restart_api(self) -> None:
        self.apis[1].kill()
        self.kills["api"] += 1
        self.apis[1].start()
        with contextlib.suppress(RuntimeError):  # not ready: the other API takes the load
            self.apis[1].wait_ready()


def terminate_connections(url: str) -> int:
    """``pg_terminate_backend`` of every other connection to the database; how many."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            return int(
                connection.execute(
                    text(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                        "FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()


async def submit_all(cluster: Cluster, key: str, hook: str, rng: random.Random) -> dict[int, str]:
    """Every task, eight at a time, each sent until an API acknowledges it; index -> id.
    A repeat that names another task than the first answer did is a duplicate."""
    ids: dict[int, str] = {}
    queue = list(range(cluster.plan.tasks))
    prompts = {index: prompt_of(index, kind_of(index), rng) for index in queue}
    async with httpx.AsyncClient(timeout=10) as client:

        async def one(index: int) -> None:
            body = {"model": MODEL, "input": {"prompt": prompts[index]}, "callBackUrl": hook}
            headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"chaos-{index}"}
            deadline = time.monotonic() + 180
            turn = index
            while True:
                api = cluster.apis[turn % 2]
                turn += 1
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    answer = await client.post(
                        f"{api.base_url}/api/v1/jobs/createTask", json=body, headers=headers
                    )
                    found = answer.json()
                    if found.get("code") == 200:
                        ids[index] = str(found["data"]["taskId"])
                        cluster.submitted += 1
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"task {index} was never acknowledged")
                await asyncio.sleep(0.2)

        async def lane() -> None:
            while queue:
                await one(queue.pop(0))

        await asyncio.gather(*(lane() for _ in range(8)))
        # Each Idempotency-Key sent once more: the same task must come back.
        for index in rng.sample(sorted(ids), min(50, len(ids))):
            answer = await client.post(
                f"{cluster.apis[0].base_url}/api/v1/jobs/createTask",
                json={"model": MODEL, "input": {"prompt": prompts[index]}, "callBackUrl": hook},
                headers={"Authorization": f"Bearer {key}", "Idempotency-Key": f"chaos-{index}"},
            )
            again = answer.json()["data"]["taskId"]
            if again != ids[index]:
                ids[-index - 1] = again  # recorded as a duplicate below
    return ids


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def run(plan: Plan) -> Report:
    logs = plan.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **SETTINGS, **plan.settings, "BANANASTAND_DATA_DIR": str(plan.data_dir)}
    if plan.database_url:
        env["BANANASTAND_DATABASE_URL"] = plan.database_url
    subprocess.run([*bananastand(), "migrate"], env=env, check=True, capture_output=True)
    made = subprocess.run(
        [*bananastand(), "keys", "create", "--name", "chaos"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    key = made.stdout.strip().splitlines()[-1]
    apis = [
        Role(f"api{n}", ["serve", "--no-worker", "--no-migrate"], env, logs, port=free_port())
        for n in (1, 2)
    ]
    workers = [Role(f"worker{n}", ["worker", "--no-migrate"], env, logs) for n in (1, 2, 3)]
    cluster = Cluster(apis, workers, plan)
    receiver = Receiver()
    chaos = threading.Thread(target=cluster.chaos, daemon=True)
    report = Report()
    try:
        for role in [*apis, *workers]:
            role.start()
        for api in apis:
            api.wait_ready()
        auth = {"Authorization": f"Bearer {key}"}
        secret = httpx.get(f"{apis[0].base_url}/api/v1/account/webhook-secret", headers=auth)
        receiver.secret = secret.json()["data"]["secret"]
        receiver.start()
        plan.say(f"{plan.tasks} tasks; workers killed every 1-3 s; logs in {logs}")
        chaos.start()
        started = time.monotonic()
        ids = asyncio.run(submit_all(cluster, key, receiver.url, random.Random(plan.seed)))
        finals = final_states(plan, ids)
        plan.say(f"submitted in {time.monotonic() - started:.1f} s; waiting for the ends")
        # The faults go on until every task has ended (and both API kills are behind).
        ended = wait_until(lambda: cluster.kills["api"] == 2 and finals(), plan.settle_timeout)
        chaos_ran = time.monotonic() - started
        cluster.stop.set()
        chaos.join()
        for worker in workers:  # one might have been killed last: all run for the rest
            if worker.process is None or worker.process.poll() is not None:
                worker.start()
        if not ended:
            wait_until(finals, plan.settle_timeout)
        wait_until(lambda: set(ids.values()) <= receiver.answered_ok, plan.settle_timeout)
        report.counts["seconds of chaos"] = round(chaos_ran)
        report.counts.update({f"{role} kills": count for role, count in cluster.kills.items()})
        check(plan, ids, receiver, apis[0].base_url, key, env, report)
    finally:
        cluster.stop.set()
        for role in [*apis, *workers]:
            role.stop()
        receiver.stop()
    return report


def final_states(plan: Plan, ids: dict[int, str]) -> Callable[[], bool]:
    """A check that every task of ``ids`` has ended (read from the database)."""
    url = plan.database_url or f"sqlite:///{plan.data_dir / 'bananastand.db'}"
    wanted = set(ids.values())

    def ended() -> bool:
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                done = connection.execute(
                    select(func.count()).where(
                        tasks_table.c.id.in_(wanted), tasks_table.c.state.in_(["success", "fail"])
                    )
                ).scalar_one()
        finally:
            engine.dispose()
        return int(done) == len(wanted)

    return ended


def check(
    plan: Plan,
    ids: dict[int, str],
    receiver: Receiver,
    base: str,
    key: str,
    env: dict[str, str],
    report: Report,
) -> None:
    counts, problems = report.counts, report.problems
    auth = {"Authorization": f"Bearer {key}"}
    duplicates = [index for index in ids if index < 0]
    counts["tasks submitted"] = len([index for index in ids if index >= 0])
    counts["duplicate tasks"] = len(duplicates)
    url = plan.database_url or f"sqlite:///{plan.data_dir / 'bananastand.db'}"
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(func.count()).select_from(tasks_table)).scalar_one()
    finally:
        engine.dispose()
    counts["task rows in the database"] = int(rows)
    if rows != plan.tasks or duplicates:
        problems.append(f"{rows} task rows and {len(duplicates)} repeats for {plan.tasks} keys")
    right = successes = out_of_attempts = downloadable = 0
    with httpx.Client(timeout=30) as client:
        for index, task_id in ids.items():
            if index < 0:
                continue
            record = client.get(
                f"{base}/api/v1/jobs/recordInfo", params={"taskId": task_id}, headers=auth
            ).json()["data"]
            expected = "fail" if kind_of(index) == "fail" else "success"
            if record["state"] == expected and (
                expected == "success" or record["failCode"] == "400"
            ):
                right += 1
            elif record["state"] == "fail" and "giving up" in str(record.get("failMsg", "")):
                out_of_attempts += 1
                problems.append(f"{task_id} ran out of attempts: {record['failMsg']}")
            else:
                problems.append(
                    f"{task_id} ({kind_of(index)}) ended {record['state']} "
                    f"{record.get('failCode')} {record.get('failMsg')}"
                )
            if record["state"] == "success":
                successes += 1
                links = json.loads(record["resultJson"])["resultUrls"]
                fetched = [client.get(link) for link in links]
                if links and all(
                    got.status_code == 200 and got.content.startswith(b"\x89PNG") for got in fetched
                ):
                    downloadable += 1
                else:
                    problems.append(f"{task_id}: a result link does not give its PNG")
            bodies = receiver.bodies.get(task_id, [])
            if task_id not in receiver.answered_ok:
                problems.append(f"{task_id}: no callback was delivered")
            elif any(body["data"]["state"] != record["state"] for body in bodies):
                problems.append(f"{task_id}: a callback says another state than the task")
        balance = client.get(f"{base}/api/v1/chat/credit", headers=auth).json()["data"]
    counts["tasks final and right"] = right
    counts["tasks out of attempts"] = out_of_attempts
    counts["results downloadable"] = downloadable
    counts["tasks called back (2xx received)"] = len(receiver.answered_ok & set(ids.values()))
    counts["callback bodies received"] = sum(len(found) for found in receiver.bodies.values())
    counts["first deliveries answered 500"] = receiver.failed
    counts["first deliveries left hanging"] = receiver.hung
    counts["callbacks with a bad signature"] = receiver.bad_signatures
    if receiver.bad_signatures:
        problems.append(f"{receiver.bad_signatures} callbacks failed signature verification")
        problems.extend(receiver.rejected[:5])
    audit = subprocess.run(
        [*bananastand(), "credits", "audit"], env=env, capture_output=True, text=True
    )
    counts["credits audit exit status"] = audit.returncode
    if audit.returncode != 0:
        problems.append(f"credits audit: {audit.stdout.strip()} {audit.stderr.strip()}")
    expected_balance = START_CREDITS - PRICE * successes
    counts["balance"] = int(balance)
    counts["balance expected"] = expected_balance
    if balance != expected_balance:
        problems.append(f"balance {balance}, expected {expected_balance}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--postgres", action="store_true", help="on a throwaway PostgreSQL")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the data folder and logs")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="more environment for every process, e.g. BANANASTAND_REDIS_URL=redis://...",
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    try:
        with database(args.postgres, folder) as url:
            settings = dict(item.split("=", 1) for item in args.setting)
            plan = Plan(args.tasks, folder / "data", url, settings=settings, seed=args.seed)
            report = run(plan)
        print("\n".join(report.lines()))
        return 1 if report.problems else 0
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def database(postgres: bool, folder: Path) -> Iterator[str]:
    if not postgres:
        yield ""
        return
    from _postgres import running_postgres

    with running_postgres(free_port()) as local:
        yield local.url()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    sys.exit(main())

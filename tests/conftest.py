"""Shared fixtures: a real bananastand server over real HTTP on loopback, on a real database.

``server`` runs the app in-process (uvicorn in a thread, its own event loop), which is
quick to start; ``spawn_server`` starts ``bananastand serve`` as a real child process for
tests that kill, signal or restart it.

Each test file's docstring starts with the layer it proves:

- ``Unit:`` one piece of ours alone, no database, server or child process;
- ``Integration:`` our pieces on a real database, real storage or real loopback HTTP
  servers (fakes of outside services that speak their wire format), without our server;
- ``Acceptance:`` the real server over HTTP, real child processes, the real client and
  CLI, a real browser: the product as people and programs use it.

The database of a run is ``BANANASTAND_TEST_DATABASE``: ``sqlite`` (the default: each data
folder's own file) or ``postgresql`` (a throwaway server per xdist worker, see
``postgres.py``, and a database of its own per data folder); either starts as a copy of
one migrated once per session (on SQLite, a test marked ``fresh_data`` starts with no
file, as on a new machine). ``make test`` runs the suite
once per database of ``BANANASTAND_TEST_DATABASES``. Every server, child process and CLI
call made here gets the database of its data folder; ``database_env``, ``database_of`` and
``rows_of`` are for tests that start one themselves or look at rows no API shows. What only
one database does is marked ``sqlite_only`` or ``postgresql_only`` (with a reason) and is
skipped on the other.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Connection, create_engine
from sqlalchemy.pool import NullPool

import databases
import postgres
from bananastand.accounts import Accounts
from bananastand.app import create_app
from bananastand.server import AppServer
from bananastand.settings import Settings
from bananastand.store import migrate, open_runner, open_store
from hosted_fake import HostedFake
from hosted_fake import serve as serve_hosted
from waiting import DEADLINE_S, wait_for

if TYPE_CHECKING:
    from browser import Browser

BIN = Path(sys.executable).parent


#: Ports handed out for servers that bind later (a child process, a restart): below the
#: kernel's ephemeral range (32768+ on Linux), where outgoing connections and ``bind(0)``
#: never land, each pytest-xdist worker in a slice of its own, in turn (a port comes back
#: only after its whole slice was used). So no other test can take one before it is bound.
#: Each session starts at a place of its own in the slice: test runs of several checkouts
#: at once on one machine would otherwise hand out the same ports in the same order.
_PORT_SLICE = 1500
_worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_slice = range(20000 + _worker % 8 * _PORT_SLICE, 20000 + (_worker % 8 + 1) * _PORT_SLICE)
_start = os.getpid() % _PORT_SLICE
_ports = itertools.cycle([*_slice[_start:], *_slice[:_start]])


def free_port() -> int:
    for _ in range(_PORT_SLICE):
        port = next(_ports)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use by something else on this machine
            return port
    raise RuntimeError("no free port in this worker's slice")


# -- the database of this run ----------------------------------------------------------------

try:
    #: The database every server, child process and CLI call of this run uses.
    DATABASE = databases.for_this_run(os.environ)
    _DATABASE_REFUSED = ""
except databases.UnknownDatabase as error:
    DATABASE, _DATABASE_REFUSED = "sqlite", str(error)


def pytest_configure(config: pytest.Config) -> None:
    if _DATABASE_REFUSED:
        raise pytest.UsageError(_DATABASE_REFUSED)


#: Markers of tests that run on one database only, by the database they run on.
ONLY_ON = {"sqlite_only": "sqlite", "postgresql_only": "postgresql"}


#: Set by ``make test`` on its passes after the first: the tests that touch no database
#: (``Unit:`` files and those marked ``no_database``) already ran, and are left out.
ONLY_DATABASE_TESTS = os.environ.get("BANANASTAND_TEST_ONLY_DATABASE", "") == "1"


def pytest_report_header() -> str:
    header = f"database: {DATABASE} (BANANASTAND_TEST_DATABASE)"
    if ONLY_DATABASE_TESTS:
        header += "; tests that touch no database are left out (BANANASTAND_TEST_ONLY_DATABASE)"
    return header


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Two test workers per core (``-n auto``; ``--maxprocesses`` caps it): most tests wait
    on child processes, sockets and servers more than they compute."""
    return 2 * (os.cpu_count() or 1)


def touches_no_database(item: pytest.Item) -> bool:
    """A ``Unit:`` file's test (see the layers above), or one marked ``no_database``."""
    module = getattr(item, "module", None)
    unit = (getattr(module, "__doc__", None) or "").startswith("Unit:")
    return unit or item.get_closest_marker("no_database") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests of one database's own mechanics are skipped, with their reason, on the other;
    tests that touch no database are left out of the passes after the first."""
    if ONLY_DATABASE_TESTS:
        left_out = [item for item in items if touches_no_database(item)]
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not touches_no_database(item)]
    for item in items:
        for name, database in ONLY_ON.items():
            marker = item.get_closest_marker(name)
            if marker is None:
                continue
            reason = marker.kwargs.get("reason")
            if not reason:
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.{name} needs a reason=")
            if database != DATABASE:
                item.add_marker(pytest.mark.skip(reason=f"{database} only: {reason}"))


_postgres: postgres.PostgresServer | None = None
_postgres_stack = contextlib.ExitStack()
_postgres_lock = threading.Lock()
#: Why this worker's PostgreSQL did not start, once it did not: no test tries again.
_postgres_failed: list[str] = []
#: Each data folder's PostgreSQL database (its URL), made on the folder's first use.
_databases: dict[Path, str] = {}


#: The running test's node id while it is one that touches no database.
_without_database: list[str] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    if touches_no_database(item):
        _without_database.append(item.nodeid)
    if item.get_closest_marker("fresh_data") is not None:
        _fresh_data.append(item.nodeid)
    try:
        return (yield)
    finally:
        _without_database.clear()
        _fresh_data.clear()


def opening_the_run_database() -> None:
    """Called wherever a test gets the run's database: a test said to touch none runs on
    one pass only, so one that does is marked wrongly, and fails here."""
    if _without_database:
        raise RuntimeError(
            f"{_without_database[0]} touches the run's database: it is not a Unit: test,"
            " nor one to mark no_database"
        )


def postgres_server() -> postgres.PostgresServer:
    """This worker's PostgreSQL server, started on first use and stopped when the session
    ends. Without PostgreSQL the test is skipped, or fails under CI (``CI`` set), which
    must never skip silently."""
    global _postgres
    opening_the_run_database()
    with _postgres_lock:
        if _postgres is None:
            if postgres.find_binaries() is None:
                reason = f"PostgreSQL is not installed ({postgres.INSTALL_HINT})"
                if os.environ.get("CI"):
                    pytest.fail(f"{reason}; CI must run the suite on PostgreSQL", pytrace=False)
                pytest.skip(reason)
            if _postgres_failed:
                raise RuntimeError(f"this worker's PostgreSQL did not start: {_postgres_failed}")
            try:
                _postgres = start_postgres(_postgres_stack)
            except Exception as error:
                _postgres_failed.append(str(error))
                raise
        assert _postgres is not None
        return _postgres


def start_postgres(stack: contextlib.ExitStack) -> postgres.PostgresServer:
    """A PostgreSQL server of its own, stopped when ``stack`` closes."""
    for _ in range(2):  # a free port is free only until someone takes it
        with contextlib.suppress(postgres.PortInUse):
            return stack.enter_context(postgres.running_postgres(free_port()))
    return stack.enter_context(postgres.running_postgres(free_port()))  # a third: or raise


_template: str | None = None
_template_lock = threading.Lock()


def migrated(url: str) -> str:
    """``url``'s new database brought to head and closed, ready to be copied: a template
    is copied only with no connection open, and a closed SQLite file holds its whole
    database (its WAL checkpointed)."""
    db = open_runner(url)
    try:
        migrate.upgrade(db)
    finally:
        asyncio.run(db.close())
    return url


def _migrated_template() -> str:
    """A database migrated once per session that every data folder's database copies: on
    a database server, a deploy runs ``bananastand migrate`` before anything else (admin
    commands never change its schema), and migrating each copy would cost ~0.3 s."""
    global _template
    server = postgres_server()
    with _template_lock:
        if _template is None:
            _template = migrated(server.new_database()).rsplit("/", 1)[1]
        return _template


_sqlite_template: Path | None = None
#: Data folders that were given a copy of the migrated SQLite file (or had a file already).
_sqlite_folders: set[Path] = set()
#: The running test's node id while its data folders start empty (``fresh_data``).
_fresh_data: list[str] = []


def _migrated_sqlite_copy(folder: Path) -> None:
    """The SQLite counterpart of ``_migrated_template``: on a folder's first use, a copy of
    a file migrated once per session, unless the folder has a file of its own (a test
    that made one) or the test is marked ``fresh_data``. A ``bananastand`` child process
    that migrated a new file imported Alembic and ran every migration: ~0.6 s of CPU,
    for hundreds of folders a run."""
    global _sqlite_template
    with _template_lock:
        if folder in _sqlite_folders or _fresh_data:
            return
        _sqlite_folders.add(folder)
        target = folder / "bananastand.db"
        if target.exists() or (folder.exists() and not folder.is_dir()):
            return
        if _sqlite_template is None:
            made = Path(tempfile.mkdtemp(prefix="bananastand-template-")) / "migrated.db"
            atexit.register(shutil.rmtree, made.parent, ignore_errors=True)
            migrated(f"sqlite:///{made}")
            _sqlite_template = made
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_sqlite_template, target)


def database_settings(data_dir: Path) -> dict[str, str]:
    """The settings that put ``data_dir``'s server on this run's database: on SQLite the
    folder's own file, on PostgreSQL a database of the folder's own; either made migrated
    on the folder's first use (as a deploy runs ``bananastand migrate`` first) and shared
    by every server and command on it."""
    opening_the_run_database()
    folder = data_dir.resolve()
    if DATABASE == "sqlite":
        _migrated_sqlite_copy(folder)
        return {}
    with _postgres_lock:
        url = _databases.get(folder)
    if url is None:
        url = postgres_server().new_database(template=_migrated_template())
        with _postgres_lock:
            url = _databases.setdefault(folder, url)
    return {"database_url": url}


def database_env(data_dir: Path) -> dict[str, str]:
    """``database_settings`` as the environment of a ``bananastand`` child process."""
    settings = database_settings(data_dir)
    return {f"BANANASTAND_{name.upper()}": value for name, value in settings.items()}


def database_of(data_dir: Path) -> str:
    """The URL of ``data_dir``'s database in this run."""
    return Settings(data_dir=data_dir, **database_settings(data_dir)).effective_database_url


@contextlib.contextmanager
def rows_of(data_dir: Path) -> Iterator[Connection]:
    """A connection to ``data_dir``'s database, in a transaction committed at the end: for
    tests that look at or change rows no API shows (plain SQLAlchemy, on any database)."""
    engine = create_engine(database_of(data_dir), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        engine.dispose()


@pytest.fixture
def empty_database(tmp_path: Path) -> str:
    """The URL of a new, empty database (no schema) on this run's database."""
    if DATABASE == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return postgres_server().new_database()


def make_key(data_dir: Path, *, test: bool = True, account_id: str | None = None) -> str:
    """A fresh key in ``data_dir``'s database, made by the real domain code."""

    async def create() -> str:
        store = await open_store(database_of(data_dir))
        try:
            made = await Accounts(store).create_key(account_id=account_id, is_test=test)
            return made.secret
        finally:
            await store.close()

    return asyncio.run(create())


@dataclass
class Server:
    """A running server and an HTTP client pointed at it."""

    base_url: str
    data_dir: Path
    settings: Settings
    #: The app itself, for tests that look at its state (in-process servers only).
    app: Any = None
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.base_url, timeout=30)

    def key(self, *, test: bool = True, account_id: str | None = None) -> str:
        return make_key(self.data_dir, test=test, account_id=account_id)

    def create(self, key: str, body: Any, **headers: str) -> dict[str, Any]:
        response = self.client.post(
            "/api/v1/jobs/createTask",
            json=body,
            headers={"Authorization": f"Bearer {key}", **headers},
        )
        assert response.status_code == 200
        answer: dict[str, Any] = response.json()
        return answer

    def record(self, key: str, task_id: str) -> dict[str, Any]:
        response = self.client.get(
            "/api/v1/jobs/recordInfo",
            params={"taskId": task_id},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 200
        answer: dict[str, Any] = response.json()
        return answer

    def wait(self, key: str, task_id: str, timeout: float = DEADLINE_S) -> dict[str, Any]:
        """Poll until the task is final; returns its record (``data``)."""
        data: dict[str, Any] = wait_for(
            lambda: self.record(key, task_id)["data"],
            lambda data: data["state"] in ("success", "fail"),
            what=f"task {task_id} final",
            timeout=timeout,
        )
        return data


def with_accounts(server: Server, action: Callable[[Accounts], Any]) -> Any:
    """Run ``action`` on the real Accounts domain object over the server's database."""

    async def run() -> Any:
        store = await open_store(server.settings.effective_database_url)
        try:
            return await action(Accounts(store))
        finally:
            await store.close()

    return asyncio.run(run())


def prompt_body(prompt: str = "a banana", **input_fields: Any) -> dict[str, Any]:
    return {"model": "nano-banana-pro", "input": {"prompt": prompt, **input_fields}}


#: Servers whose tests are over, still finishing their shutdown (see ``running_server``).
_STOPPING: list[threading.Thread] = []


@contextlib.contextmanager
def running_server(
    data_dir: Path, *, run_worker: bool = True, stop_in_background: bool = False, **overrides: Any
) -> Iterator[Server]:
    """A real server in this process (uvicorn in a thread with its own event loop).

    ``resolver=`` (an async ``(host, port) -> [ip, ...]``) replaces DNS for its fetches.
    Rate limits are off unless a test sets them: most tests fire calls faster than 20/s.

    ``stop_in_background``: at exit the server is told to stop and left to finish while
    later tests run (uvicorn's shutdown sleeps 0.1 s and its loop ticks every 0.1 s: a
    quarter of a second per test, for hundreds of tests); the session's end waits for it.
    Without it, the server has stopped when the ``with`` block ends.
    """
    resolver = overrides.pop("resolver", None)
    overrides.setdefault("create_rate", "unlimited")
    overrides.setdefault("read_rate", "unlimited")
    port = free_port()
    settings = Settings(
        host="127.0.0.1",
        port=port,
        data_dir=data_dir,
        access_log=False,
        poll_interval_seconds=0.2,
        **{**database_settings(data_dir), **overrides},
    )
    app = create_app(settings, run_worker=run_worker, resolver=resolver)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = AppServer(config, app)  # as ``serve`` runs it: open event streams end at exit
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def started() -> bool:
        assert thread.is_alive(), "the server's thread ended before it started"
        return server.started

    wait_for(started, what="the in-process server started", interval=0.02)
    handle = Server(f"http://127.0.0.1:{port}", data_dir, settings, app)
    try:
        yield handle
    finally:
        handle.client.close()
        server.should_exit = True
        if stop_in_background:
            _STOPPING.append(thread)
        else:
            thread.join(timeout=30)


@pytest.fixture(scope="session", autouse=True)
def _servers_have_stopped() -> Iterator[None]:
    """Every server left to stop in the background has stopped when the session ends; then
    this worker's PostgreSQL server, if it started one, stops."""
    yield
    with _postgres_stack:
        for thread in _STOPPING:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in _STOPPING), "a server did not stop"


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start in-process servers with settings overrides; all are told to stop at the end
    (and finish stopping in the background)."""
    with contextlib.ExitStack() as stack:
        started = 0

        def start(*, run_worker: bool = True, **overrides: Any) -> Server:
            nonlocal started
            started += 1
            data_dir = overrides.pop("data_dir", tmp_path / f"data-{started}")
            return stack.enter_context(
                running_server(
                    data_dir, run_worker=run_worker, stop_in_background=True, **overrides
                )
            )

        yield start


@pytest.fixture
def server(start_server: Callable[..., Server]) -> Server:
    return start_server()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server without a worker for a whole test module: for the many cases that are
    refused, or whose tasks need only wait."""
    with running_server(tmp_path_factory.mktemp("shared"), run_worker=False) as handle:
        yield handle


@dataclass
class ServerProcess:
    """``bananastand serve`` (or ``worker``) as a child process."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def healthy(child: ServerProcess, timeout: float = DEADLINE_S) -> None:
    """Until the child answers ``/healthz``; one that exited fails at once, with its log."""

    def answering() -> bool:
        assert child.process.poll() is None, f"the server exited:\n{child.log()}"
        try:
            return httpx.get(f"{child.base_url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(
        answering, what=lambda: f"the server started:\n{child.log()}", timeout=timeout, interval=0.1
    )


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``bananastand ARGS...`` with ``BANANASTAND_*`` env overrides; waits for
    ``/healthz`` when the command serves HTTP. Every child is killed at the end."""
    children: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, wait: bool = True) -> ServerProcess:
        # A given BANANASTAND_PORT restarts a server where its clients expect it.
        port = int((env or {}).get("BANANASTAND_PORT") or free_port())
        data_dir = Path((env or {}).get("BANANASTAND_DATA_DIR") or tmp_path / "data")
        full_env = {
            **os.environ,
            "BANANASTAND_DATA_DIR": str(data_dir),
            **database_env(data_dir),
            "BANANASTAND_PORT": str(port),
            "BANANASTAND_LOG_FORMAT": "json",
            "BANANASTAND_POLL_INTERVAL_SECONDS": "0.2",
            **(env or {}),
        }
        log_path = tmp_path / f"child-{len(children)}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [str(BIN / "bananastand"), *args],
                env=full_env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        child = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
        children.append(child)
        if wait and args and args[0] == "serve":
            # Only a guard against a server that never comes up: a busy 2-core machine
            # has taken more than 30 s to start one (imports, migrations check, banner).
            healthy(child, timeout=120)
        return child

    yield start
    for child in children:
        if child.process.poll() is None:
            child.kill()


# -- S3: a real S3-compatible server (moto in server mode) on loopback ---------------------


@dataclass
class S3Server:
    endpoint_url: str

    def settings(self, bucket: str) -> dict[str, str]:
        """The settings overrides that point bananastand at ``bucket`` on this server."""
        return {
            "storage_backend": "s3",
            "s3_endpoint_url": self.endpoint_url,
            "s3_bucket": bucket,
            "s3_region": "us-east-1",
            "s3_access_key_id": "testing",
            "s3_secret_access_key": "testing",
        }

    def client(self) -> Any:
        """A boto3 S3 client of this server, for tests that look into a bucket (close it)."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def new_bucket(self) -> str:
        name = "bucket-" + os.urandom(6).hex()
        client = self.client()
        client.create_bucket(Bucket=name)
        client.close()
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server in a thread on loopback, speaking the real S3 wire protocol."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


# -- Redis: a throwaway redis-server on loopback ------------------------------------------


@pytest.fixture
def hosted() -> Iterator[HostedFake]:
    """The loopback fake of the hosted jobs API (``hosted_fake``)."""
    fake = HostedFake()
    server = serve_hosted(fake)
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A fresh redis-server of its own (nothing saved), answering once this yields."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:

        def answering() -> bool:
            assert process.poll() is None, "redis-server exited"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return True
            return False

        wait_for(answering, what="redis-server answering")
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def cli(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``bananastand`` command on ``data_dir``'s database."""
    return subprocess.run(
        [str(BIN / "bananastand"), *args],
        env={
            **os.environ,
            "BANANASTAND_DATA_DIR": str(data_dir),
            **database_env(data_dir),
            "BANANASTAND_LOG_FORMAT": "json",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium, refused everything but loopback (tests/browser.py); imported
    here, on first use, so that other tests never load Playwright."""
    from browser import browser_session

    yield from browser_session()

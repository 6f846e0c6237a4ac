"""Acceptance: ``bananastand db copy`` moves a real server's database, SQLite to SQLite and
SQLite to PostgreSQL, through the real CLI; a server started on the copy takes the old
keys, shows the old balances and (with ``--with-tasks``) the old tasks, and ``credits
audit`` passes on it. Refusals are one line, their exit status, and nothing written.

The source is made once per module by a real server on SQLite: keys made with the CLI,
credits granted (more ledger rows than one copy batch holds), tasks run on the sandbox,
charged, one failed and refunded, two with a callBackUrl delivered to a loopback
receiver, one with an Idempotency-Key; a webhook secret, maintenance and a model switch.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from accounts_helpers import balance, call
from bananastand.db_copy import BATCH
from bananastand.store import open_store
from conftest import Server, cli, free_port, prompt_body, running_server
from postgres import INSTALL_HINT, PostgresServer, find_binaries, running_postgres
from receiver import Receiver
from test_webhooks import delivered, wait_info
from waiting import wait_for

#: The source is an embedded SQLite file, copied to SQLite and PostgreSQL in one pass of
#: the suite (a PostgreSQL pass would give the source folder a database server's).
pytestmark = pytest.mark.sqlite_only(reason="it copies SQLite to SQLite and PostgreSQL itself")

ALWAYS = ("accounts", "api_keys", "credit_ledger", "webhook_secrets", "switches")
WITH_TASKS = ("tasks", "idempotency_keys", "callbacks", "callback_attempts")
#: Grants beyond the first, so that the ledger spans more than one batch of the copy.
EXTRA_GRANTS = BATCH + 200


@dataclass(frozen=True)
class Source:
    data_dir: Path
    key: str  # a live key: its tasks were charged
    balance: int
    secret: str  # the account's webhook secret
    #: Task id -> (the key that made it, its recordInfo data as the source server had it).
    tasks: dict[str, tuple[str, dict[str, Any]]]
    callbacks: dict[str, dict[str, Any]]  # task id -> its callback, delivered
    idempotent: str  # the task made with ``Idempotency-Key: first``
    rows: dict[str, int]

    @property
    def path(self) -> Path:
        return self.data_dir / "bananastand.db"

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"


def row_counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return {
                name: connection.execute(text(f"SELECT count(*) FROM {name}")).scalar_one()
                for name in (*ALWAYS, *WITH_TASKS)
            }
    finally:
        engine.dispose()


def last_line(done: Any) -> str:
    return str(done.stdout.strip().splitlines()[-1])


def grant_many(url: str, account_id: str, times: int) -> None:
    async def grant() -> None:
        store = await open_store(url)
        try:
            await asyncio.gather(*(store.grant(account_id, 1, "many") for _ in range(times)))
        finally:
            await store.close()

    asyncio.run(grant())


def callback(server: Server, key: str, task_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = call(
        server, "GET", "/api/v1/jobs/callbacks", key, params={"taskId": task_id}
    ).json()
    return answer


def create_when_open(server: Server, key: str) -> str:
    """A new task's id, once the server has seen maintenance end (its switch poll)."""
    answer = wait_for(
        lambda: server.create(key, prompt_body()),
        lambda answer: answer["code"] != 455,
        what="createTask accepted again after maintenance",
    )
    assert answer["code"] == 200, answer
    return str(answer["data"]["taskId"])


def run_tasks(server: Server, key: str, test_key: str, receiver_url: str) -> dict[str, str]:
    """Task ids by what they are."""
    made = {
        "success": server.create(key, {**prompt_body(), "callBackUrl": receiver_url}),
        "idempotent": server.create(key, prompt_body(), **{"Idempotency-Key": "first"}),
        "refunded": server.create(
            key, {**prompt_body("[sandbox:fail=safety]"), "callBackUrl": receiver_url}
        ),
        "test": server.create(test_key, prompt_body()),
    }
    return {name: answer["data"]["taskId"] for name, answer in made.items()}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    data_dir = tmp_path_factory.mktemp("source")
    made = cli(data_dir, "keys", "create", "--name", "live")
    assert made.returncode == 0, made.stderr
    key = last_line(made)
    account_id = made.stdout.split("account: ")[1].split()[0]
    test_key = last_line(cli(data_dir, "keys", "create", "--test"))
    assert cli(data_dir, "credits", "add", "100", "--key", key).returncode == 0
    grant_many(f"sqlite:///{data_dir / 'bananastand.db'}", account_id, EXTRA_GRANTS)
    secret = last_line(cli(data_dir, "webhooks", "secret", "--account", account_id))
    receiver = Receiver()
    try:
        with running_server(
            data_dir,
            live_provider="sandbox",
            allow_private_networks=["127.0.0.1"],
            webhook_retry_schedule_seconds=[0.0] + [0.2] * 20,
        ) as server:
            ids = run_tasks(server, key, test_key, receiver.url)
            by = {task_id: test_key if name == "test" else key for name, task_id in ids.items()}
            tasks = {task_id: (by[task_id], server.wait(by[task_id], task_id)) for task_id in by}
            callbacks = {
                ids[n]: wait_info(server, key, ids[n], delivered) for n in ("success", "refunded")
            }
            left = balance(server, key)
    finally:
        receiver.close()
    assert cli(data_dir, "maintenance", "on", "--message", "moving").returncode == 0
    assert cli(data_dir, "models", "disable", "nano-banana-2").returncode == 0
    rows = row_counts(f"sqlite:///{data_dir / 'bananastand.db'}")
    found = Source(data_dir, key, left, secret, tasks, callbacks, ids["idempotent"], rows)
    # What the copies must carry: a refund, a charge of each kind, one of everything.
    assert left == 100 + EXTRA_GRANTS - 2 * 18
    assert all(found.rows[name] > 0 for name in (*ALWAYS, *WITH_TASKS)), found.rows
    assert found.rows["credit_ledger"] > BATCH
    return found


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL; skipped where it is not installed, except under ``CI``."""
    if find_binaries() is None or shutil.which("psql") is None:
        reason = f"PostgreSQL is not installed ({INSTALL_HINT})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests")
        pytest.skip(reason)
    with running_postgres(free_port()) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def new_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'copy.db'}"
    postgres: PostgresServer = request.getfixturevalue("postgres")
    return postgres.new_database()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy(source: Source, target: str, *options: str) -> Any:
    return cli(source.data_dir, "db", "copy", "--from", source.url, "--to", target, *options)


def assert_refused(done: Any, status: int, *words: str) -> str:
    """One line on stderr, nothing on stdout, no traceback; the line."""
    assert done.returncode == status, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]
    return str(lines[0])


@pytest.mark.parametrize("with_tasks", [False, True], ids=["accounts", "with-tasks"])
def test_a_copy_serves_the_old_keys_balances_and_tasks(
    source: Source, new_target: str, with_tasks: bool, start_server: Callable[..., Server]
) -> None:
    before = digest(source.path)
    # Typed as people type it: a plain postgresql:// URL means psycopg 3 to the copy.
    typed = new_target.replace("postgresql+psycopg://", "postgresql://")
    done = copy(source, typed, *(["--with-tasks"] if with_tasks else []))
    assert done.returncode == 0, done.stderr
    copied = ALWAYS + (WITH_TASKS if with_tasks else ())
    expected = {name: source.rows[name] if name in copied else 0 for name in source.rows}
    assert row_counts(new_target) == expected
    for name in copied:
        assert f"{name}: {source.rows[name]}\n" in done.stdout
    assert f"copied {sum(expected.values())} rows into " in done.stdout
    assert digest(source.path) == before  # the source was only read

    on_copy = {"BANANASTAND_DATABASE_URL": new_target}
    audit = cli(source.data_dir, "credits", "audit", **on_copy)
    assert audit.returncode == 0, audit.stdout + audit.stderr

    server = start_server(database_url=new_target, live_provider="sandbox", switch_poll_seconds=0.1)
    assert balance(server, source.key) == source.balance
    secret = call(server, "GET", "/api/v1/account/webhook-secret", source.key).json()
    assert secret["data"]["secret"] == source.secret
    assert server.create(source.key, prompt_body())["code"] == 455  # maintenance came too
    for task_id, (made_by, data) in source.tasks.items():
        answer = server.record(made_by, task_id)
        if with_tasks:
            assert answer["code"] == 200, answer
            kept = ("state", "failCode", "createTime", "completeTime", "creditsConsumed", "param")
            assert {f: answer["data"][f] for f in kept} == {f: data[f] for f in kept}
        else:
            assert answer["code"] == 404, answer
    for task_id, sent in source.callbacks.items():
        answer = callback(server, source.key, task_id)
        assert answer["data"] == sent if with_tasks else answer["code"] == 404, answer

    # New rows take new keys (PostgreSQL's sequences were moved past the copied ones).
    assert cli(source.data_dir, "maintenance", "off", **on_copy).returncode == 0
    task_id = create_when_open(server, source.key)
    assert server.wait(source.key, task_id)["state"] == "success"
    assert balance(server, source.key) == source.balance - 18
    if with_tasks:  # the Idempotency-Key still answers its task, charging nothing again
        again = server.create(source.key, prompt_body(), **{"Idempotency-Key": "first"})
        assert again["data"]["taskId"] == source.idempotent
        assert balance(server, source.key) == source.balance - 18
    disabled = server.create(source.key, {**prompt_body(), "model": "nano-banana-2"})
    assert disabled["code"] == 505, disabled
    audit = cli(source.data_dir, "credits", "audit", **on_copy)
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_a_target_with_rows_is_refused_and_left_as_it_was(source: Source, new_target: str) -> None:
    assert copy(source, new_target).returncode == 0
    before = row_counts(new_target)
    refused = copy(source, new_target, "--with-tasks")
    assert_refused(refused, 2, "not empty", "table accounts")
    assert row_counts(new_target) == before


def test_a_source_behind_the_schema_is_refused_and_nothing_written(
    source: Source, tmp_path: Path
) -> None:
    old = tmp_path / "old.db"
    with sqlite3.connect(source.path) as reading, sqlite3.connect(old) as writing:
        reading.backup(writing)
        writing.execute("UPDATE alembic_version SET version_num = '0007'")
    before = digest(old)
    target = tmp_path / "copy.db"
    refused = cli(
        tmp_path, "db", "copy", "--from", f"sqlite:///{old}", "--to", f"sqlite:///{target}"
    )
    assert_refused(refused, 2, "schema revision 0007", "bananastand migrate")
    assert digest(old) == before
    assert not target.exists()


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("postgresql://bananastand:pa55word@127.0.0.1:{port}/bananastand", 4),
        ("mysql://bananastand:pa55word@127.0.0.1:{port}/bananastand", 2),
        ("bananastand:pa55word@127.0.0.1:{port}", 2),
    ],
    ids=["closed-port", "other-database", "not-a-url"],
)
def test_a_target_that_cannot_be_used_is_one_line_without_its_password(
    source: Source, target: str, status: int
) -> None:
    before = digest(source.path)
    refused = copy(source, target.format(port=free_port()))  # nothing listens there
    line = assert_refused(refused, status, "--to" if status == 2 else "127.0.0.1")
    assert "pa55word" not in line
    assert digest(source.path) == before


def test_a_copy_that_fails_half_way_leaves_the_target_empty(
    source: Source, postgres: PostgresServer, tmp_path: Path
) -> None:
    """PostgreSQL holds strings to their length, SQLite never did: a webhook secret too
    long for its column (copied after the accounts and the ledger) undoes the copy."""
    damaged = tmp_path / "damaged.db"
    with sqlite3.connect(source.path) as reading, sqlite3.connect(damaged) as writing:
        reading.backup(writing)
        writing.execute("UPDATE webhook_secrets SET secret = ?", ("x" * 65,))
    target = postgres.new_database()
    refused = cli(
        tmp_path, "db", "copy", "--from", f"sqlite:///{damaged}", "--to", target, "--with-tasks"
    )
    assert_refused(refused, 4, "character varying(64)", "nothing was copied")
    assert set(row_counts(target).values()) == {0}

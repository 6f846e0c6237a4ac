"""Acceptance: the PostgreSQL adapter's own mechanics, with `bananastand` child processes.

Many processes migrating one new database at once, every connection terminated (and the
server restarted) under load, a database that cannot be used at start, a schema that is
not the code's, `bananastand migrate`, and the database's clock.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import postgres
from bananastand.store import migrate, open_store
from conftest import BIN, ServerProcess, free_port, healthy, postgres_server, prompt_body
from waiting import wait_for

pytestmark = pytest.mark.postgresql_only(reason="the PostgreSQL adapter's own mechanics")


def bananastand(url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BANANASTAND_DATABASE_URL": url, "BANANASTAND_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [str(BIN / "bananastand"), *args], env=env, capture_output=True, text=True, timeout=120
    )


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def serving(spawn: Callable[..., ServerProcess], url: str, data_dir: Path) -> ServerProcess:
    return spawn(
        "serve",
        env={
            "BANANASTAND_DATABASE_URL": url,
            "BANANASTAND_DATA_DIR": str(data_dir),
            "BANANASTAND_SIGNING_SECRET": "a secret every server of the test shares",
            # Clients here call as fast as they can: 20 a second per key would refuse them.
            "BANANASTAND_CREATE_RATE": "unlimited",
            "BANANASTAND_READ_RATE": "unlimited",
        },
        wait=False,
    )


def test_five_servers_started_at_once_on_a_new_database_migrate_it_once(
    spawn: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    pg = postgres_server()
    url = pg.new_database()
    servers = [serving(spawn, url, tmp_path / f"data-{n}") for n in range(5)]
    for server in servers:
        healthy(server)
    assert pg.psql("SELECT version_num FROM alembic_version", database_name(url)).split() == (
        sorted(migrate.head_revisions())
    )
    for server in servers:
        assert server.process.poll() is None, server.log()


def terminate_every_connection(pg: postgres.PostgresServer, url: str) -> None:
    killed = pg.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE datname = '{database_name(url)}' AND pid <> pg_backend_pid()"
    )
    assert int(killed) >= 1


def restart_the_server(pg: postgres.PostgresServer, _url: str) -> None:
    pg.restart()


@pytest.mark.parametrize("cut", [terminate_every_connection, restart_the_server])
def test_a_server_whose_connections_are_all_cut_carries_on(
    spawn: Callable[..., ServerProcess],
    tmp_path: Path,
    cut: Callable[[postgres.PostgresServer, str], None],
) -> None:
    """Every backend of the database killed, or the database server restarted, while
    clients create and read: the process reconnects by itself; every createTask
    answered 200 has its task; answers during the cut are envelopes (500 with a request
    id at worst), never a hang."""
    pg = postgres_server()
    url = pg.new_database()
    data_dir = tmp_path / "data"
    migrated = bananastand(url, data_dir, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    made = bananastand(url, data_dir, "keys", "create", "--test", "--name", "load")
    assert made.returncode == 0, made.stderr
    key = next(word for word in made.stdout.split() if word.startswith("bs_test_"))
    server = serving(spawn, url, data_dir)
    healthy(server)
    headers = {"Authorization": f"Bearer {key}"}
    acknowledged: list[str] = []
    codes: list[int] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
            while not stop.is_set():
                answer = http.post("/api/v1/jobs/createTask", json=prompt_body()).json()
                codes.append(answer["code"])
                if answer["code"] == 200:
                    task_id = answer["data"]["taskId"]
                    acknowledged.append(task_id)
                    record = http.get("/api/v1/jobs/recordInfo", params={"taskId": task_id})
                    codes.append(record.json()["code"])
                else:
                    assert answer["code"] == 500, answer
                    assert "request id" in answer["msg"], answer

    with ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(client) for _ in range(4)]

        def until(count: int) -> None:
            """Until ``count`` tasks are acknowledged; a client that stopped says why."""

            def acknowledged_enough() -> bool:
                for done in clients:
                    if done.done():
                        done.result()
                        raise AssertionError("a client stopped")
                return len(acknowledged) >= count

            wait_for(acknowledged_enough, what=f"{count} tasks acknowledged", timeout=300)

        until(50)
        cut(pg, url)
        before = len(acknowledged)
        until(before + 50)  # it carries on: 50 more after the cut
        stop.set()
        for done in clients:
            done.result(timeout=60)
    assert server.process.poll() is None, server.log()
    stored = pg.psql("SELECT id FROM tasks", database_name(url)).split()
    assert set(acknowledged) <= set(stored)
    assert codes.count(200) >= 100


def test_a_database_that_cannot_be_used_at_start_is_one_line_and_exit_status_1(
    tmp_path: Path,
) -> None:
    pg = postgres_server()
    url = pg.new_database()
    role = postgres.PASSWORD_ROLE
    pg.psql(f"DO $$ BEGIN CREATE ROLE {role} LOGIN PASSWORD 'right'; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$")  # fmt: skip
    at = f"127.0.0.1:{pg.port}"
    cases = {
        f"postgresql://postgres@127.0.0.1:{free_port()}/x": "refused",
        f"postgresql://{role}:not-the-password@{at}/postgres": "password authentication failed",
        f"postgresql://postgres@{at}/no_such_database": 'database "no_such_database"',
        f"mysql://postgres@{at}/{database_name(url)}": "BANANASTAND_DATABASE_URL",
    }
    # Every case with serve; worker and migrate start the same way (one case each).
    runs = [(wrong, said, "serve") for wrong, said in cases.items()]
    refused_url = next(iter(cases))
    runs += [(refused_url, cases[refused_url], command) for command in ("worker", "migrate")]
    for wrong, said, command in runs:
        refused = bananastand(wrong, tmp_path / "data", command)
        assert refused.returncode == 1, (wrong, command, refused.stderr)
        [line] = refused.stderr.strip().splitlines()
        assert said in line, (wrong, line)
        assert "not-the-password" not in line
    assert bananastand(url, tmp_path / "data", "migrate").returncode == 0


def test_a_schema_that_is_not_the_codes_is_one_line_naming_migrate(tmp_path: Path) -> None:
    pg = postgres_server()
    url = pg.new_database()
    data_dir = tmp_path / "data"
    for args in (("keys", "list"), ("serve", "--no-migrate"), ("worker", "--no-migrate")):
        refused = bananastand(url, data_dir, *args)
        assert refused.returncode != 0
        [line] = refused.stderr.strip().splitlines()
        assert "no bananastand tables" in line, line
        assert "bananastand migrate" in line, line
    assert bananastand(url, data_dir, "migrate").returncode == 0
    assert bananastand(url, data_dir, "keys", "list").returncode == 0
    pg.psql("UPDATE alembic_version SET version_num = '9999'", database_name(url))
    newer = bananastand(url, data_dir, "worker", "--no-migrate")
    [line] = newer.stderr.strip().splitlines()
    assert "newer than this version" in line, line
    assert "bananastand migrate" in line, line


def test_the_stores_clock_is_the_databases() -> None:
    pg = postgres_server()
    url = pg.new_database()

    async def offset() -> int:
        store = await open_store(url)
        try:
            database_ms = int(
                pg.psql("SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint")
            )
            return store.now_ms() - database_ms
        finally:
            await store.close()

    # The same machine: the clocks agree to within the psql round trip.
    assert abs(asyncio.run(offset())) < 2_000

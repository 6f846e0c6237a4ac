"""A throwaway PostgreSQL server for tests: its own data folder, a loopback port, no auth
(but for the role ``PASSWORD_ROLE``, which must give its password).

Debian keeps ``initdb`` and ``pg_ctl`` in ``/usr/lib/postgresql/<version>/bin``, off PATH,
and both refuse to run as root: as root they run as the ``postgres`` user (``runuser``),
in a data folder that user owns. One server per test process (xdist worker); each test
gets a database of its own, made from ``template0`` in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

#: Where a missing server is explained (a local skip; CI installs it).
INSTALL_HINT = "apt-get install postgresql"
#: The one role that signs in with a password (scram), for the tests of bad credentials.
PASSWORD_ROLE = "with_password"


def find_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (the newest version), if any."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


@dataclass
class PostgresServer:
    port: int
    _names: Iterator[int]
    _pg_ctl: list[str]
    #: One connection kept open for making databases: a ``psql`` process per database
    #: cost more than the copy itself, hundreds of times a run.
    _admin: psycopg.Connection[tuple[object, ...]] | None = None
    _admin_lock: threading.Lock = field(default_factory=threading.Lock)

    def restart(self) -> None:
        """Stop the server (every connection cut, as in a deploy) and start it again on
        the same port and data."""
        subprocess.run([*self._pg_ctl, "-m", "fast", "-w", "-t", "60", "restart"],
                       capture_output=True, check=True, timeout=120)  # fmt: skip

    def stop(self) -> None:
        """Stop the server (every connection cut) until ``start``."""
        subprocess.run([*self._pg_ctl, "-m", "fast", "-w", "-t", "60", "stop"],
                       capture_output=True, check=True, timeout=120)  # fmt: skip

    def start(self) -> None:
        subprocess.run([*self._pg_ctl, "-w", "-t", "60", "start"],
                       capture_output=True, check=True, timeout=120)  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self, template: str = "template0") -> str:
        """A fresh database, a copy of ``template`` (by default empty); its URL. A template
        must have no connections open while it is copied."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        with self._admin_lock:
            try:
                self._create(name, template)
            except psycopg.OperationalError:  # cut by a test that restarted the server
                self._admin = None
                self._create(name, template)
        return self.url(name)

    def close(self) -> None:
        """Close the kept connection (before the server stops: else it is left to the
        garbage collector, which warns of it as an unclosed connection)."""
        with self._admin_lock:
            if self._admin is not None:
                self._admin.close()
                self._admin = None

    def _create(self, name: str, template: str) -> None:
        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True)
        # FILE_COPY copies the template's files instead of writing them all to the WAL
        # (the default since PostgreSQL 15, which brought the choice): half the time, and
        # these databases need no WAL.
        strategy = " STRATEGY FILE_COPY" if self._admin.info.server_version >= 150000 else ""
        self._admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}'.encode())

    def statement_calls(self, database: str, like: str) -> int:
        """How many times statements whose text is ``LIKE like`` ran in ``database`` so
        far (``pg_stat_statements``, made in that database on first use): what reached
        the server, whatever path the client sent it by."""
        self.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", database)
        found = self.psql(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            f" AND query LIKE '{like}'",
            database,
        )
        return int(found)

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = subprocess.run(
            ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql,
             f"postgresql://postgres@127.0.0.1:{self.port}/{database}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout


class PortInUse(RuntimeError):
    """Something else took the port between choosing it and the server binding it."""


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextlib.contextmanager
def running_postgres(port: int) -> Iterator[PostgresServer]:
    """Start a server on ``port`` (loopback only) and stop it at the end."""
    binaries = find_binaries()
    if binaries is None:
        raise FileNotFoundError(f"PostgreSQL is not installed ({INSTALL_HINT})")
    top = Path(tempfile.mkdtemp(prefix="bananastand-pg-"))
    data = top / "data"
    try:
        if os.geteuid() == 0:
            shutil.chown(top, "postgres")
        subprocess.run(
            _as_postgres([str(binaries / "initdb"), "-D", str(data), "-U", "postgres",
                          "-A", "trust", "--no-sync", "-E", "UTF8", "--locale", "C"]),
            capture_output=True, check=True, timeout=120,
        )  # fmt: skip
        hba = data / "pg_hba.conf"
        hba.write_text(f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={top}"
            " -c fsync=off -c full_page_writes=off -c max_connections=300"
            # For tests that count what reached the database (``statement_calls``).
            " -c shared_preload_libraries=pg_stat_statements"
        )
        log = top / "log"
        try:
            pg_ctl = _as_postgres(
                [str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log)]
            )
            started = subprocess.run([*pg_ctl, "-w", "-t", "60", "start"],
                                     capture_output=True, text=True, check=False,
                                     timeout=120)  # fmt: skip
            if started.returncode != 0:
                said = log.read_text(errors="replace") if log.exists() else started.stderr
                error = PortInUse if "could not bind" in said else RuntimeError
                raise error(f"PostgreSQL did not start on port {port}:\n{said[-2000:]}")
            server = PostgresServer(port, itertools.count(1), pg_ctl)
            try:
                yield server
            finally:
                server.close()
        finally:
            subprocess.run(
                _as_postgres([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate",
                              "-w", "stop"]),
                capture_output=True, check=False, timeout=120,
            )  # fmt: skip
    finally:
        shutil.rmtree(top, ignore_errors=True)

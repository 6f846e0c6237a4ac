"""A throwaway PostgreSQL server for the benchmarks, with durable settings.

Unlike the test suite's (``tests/postgres.py``, tuned for speed: ``fsync=off``, no sync
at ``initdb``), this one keeps what a deployment would: ``fsync=on``,
``synchronous_commit=on``, ``full_page_writes=on``, and an ``initdb`` that syncs, so a
commit it acknowledges is on disk. It listens on a loopback port only, trusts local
connections (the benchmark's server connects as ``postgres``), and can be kept to one
CPU (``taskset``; its processes inherit it). As root, ``initdb`` and ``pg_ctl`` run as the
``postgres`` user (``runuser``), in a folder that user owns; Debian keeps them in
``/usr/lib/postgresql/<version>/bin``, off PATH.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from _serve import proc_stats

INSTALL_HINT = "apt-get install postgresql"
#: The settings that make a commit durable; given on the command line so that nothing in
#: a default configuration file can weaken them.
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


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


def _as_postgres(args: Sequence[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)


@dataclass
class LocalPostgres:
    port: int
    cpu: int | None
    folder: Path
    binaries: Path
    #: Load ``pg_stat_statements`` (counting statements costs a little on every one).
    statements: bool = False

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        pin = ["taskset", "-c", str(self.cpu)] if self.cpu is not None else []
        return subprocess.run(
            [*pin, *_as_postgres([str(self.binaries / "pg_ctl"), "-D", str(self.data), *args])],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    def start(self) -> None:
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.folder}",
                "-c max_connections=100",
                *(["-c shared_preload_libraries=pg_stat_statements"] if self.statements else []),
                *(f"-c {name}={value}" for name, value in DURABLE.items()),
            ]
        )
        log = self.folder / "log"
        done = self._pg_ctl("-o", options, "-l", str(log), "-w", "-t", "60", "start")
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}{tail}")

    def crash(self) -> None:
        """Stop at once, as a crash would: no shutdown checkpoint; the next start replays
        the WAL (``pg_ctl stop -m immediate``)."""
        self._pg_ctl("-m", "immediate", "-w", "stop")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def cpu_seconds(self) -> float:
        """CPU (user + system) of the whole server so far: the postmaster, its live
        children (backends, WAL writer, checkpointer...) and the children it has reaped,
        so a backend that exits between two readings keeps its time in the sum."""
        root = self.postmaster_pid()
        if root is None:
            return float("nan")
        ticks = 0
        for pid, fields in proc_stats().items():
            if pid == root:
                ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
            elif int(fields[1]) == root:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def running_postgres(
    port: int, *, cpu: int | None = None, keep: bool = False, statements: bool = False
) -> Iterator[LocalPostgres]:
    """Initialise and start a server on ``port`` (on ``cpu`` alone when given; with
    ``pg_stat_statements`` loaded for ``statements``); stop it and delete its folder
    (``keep``: leave the folder) at the end."""
    binaries = find_binaries()
    if binaries is None:
        raise FileNotFoundError(f"PostgreSQL is not installed ({INSTALL_HINT})")
    folder = Path(tempfile.mkdtemp(prefix="bananastand-bench-pg-"))
    server = LocalPostgres(port, cpu, folder, binaries, statements)
    try:
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres")
        done = subprocess.run(
            _as_postgres([str(binaries / "initdb"), "-D", str(server.data), "-U", "postgres",
                          "-A", "trust", "-E", "UTF8", "--locale", "C"]),
            capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        server.start()
        try:
            yield server
        finally:
            server.crash()  # nothing in it is worth a checkpoint
    finally:
        if keep:
            print(f"PostgreSQL data kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)

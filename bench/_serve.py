"""Starting ``bananastand serve`` as a user runs it, for the benchmarks that need one."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

HOST = "127.0.0.1"


def proc_stats() -> dict[int, list[str]]:
    """Every live process: pid -> the fields of its /proc stat after the command name
    (``fields[1]`` is the parent, ``fields[11:15]`` user, system, and reaped children's
    user and system ticks)."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after its last ')'.
        stats[int(entry.name)] = stat[stat.rindex(")") + 2 :].split()
    return stats


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 60) -> None:
    """SIGTERM (a clean drain), then SIGKILL if it has not exited within ``timeout``."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def bananastand() -> list[str]:
    """The ``bananastand`` command of the running interpreter's environment."""
    found = shutil.which("bananastand", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "bananastand.cli"]


def test_key(env: dict[str, str]) -> str:
    """A new test key in ``env``'s data folder (the last line ``keys create`` prints)."""
    made = subprocess.run(
        [*bananastand(), "keys", "create", "--test"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


def on_cpu(cpu: int | None) -> Callable[[], None] | None:
    """For ``preexec_fn``: keep a child process on one CPU (Linux); None: anywhere."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def start_serve(
    env: dict[str, str],
    log_path: Path,
    port: int,
    *,
    cpu: int | None = None,
    options: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """``bananastand serve [options]`` in a child process (on ``cpu`` alone when given),
    once ``/healthz`` answers; raises RuntimeError (with the child stopped) when it does
    not within 30 s."""
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [*bananastand(), "serve", *options],
            env=env,
            stdout=log,
            stderr=log,
            preexec_fn=on_cpu(cpu),
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://{HOST}:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise RuntimeError(f"server did not start; see {log_path}")
        time.sleep(0.1)

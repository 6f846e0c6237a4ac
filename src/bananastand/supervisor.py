"""``serve --worker-processes N``: the API process keeps N ``bananastand worker`` children.

One Python process runs on one core; the worker path (decoding, resizing, hashing, the
store's writes) is what a busy server spends its CPU on, so the API hands it to child
processes, on SQLite too. The children are ordinary ``bananastand worker`` processes on
the same settings and database: they claim tasks with leases as any worker does, so the
supervisor only keeps them running and stops them.

- A child that exits while the supervisor is not stopping is started again, after a
  delay that doubles with each quick death (``Backoff``): a child that cannot start (a
  setting the worker refuses, a database that is down) costs one start per 30 s, not a
  core. A child that stayed up a while starts again at once.
- ``stop`` (the API's shutdown, after its last request) sends each child SIGTERM, which
  drains it as it drains ``bananastand worker``: running tasks get
  ``shutdown_grace_seconds``, the rest are handed back. A child still running after the
  grace period and ``STOP_MARGIN_S`` is killed; its leases expire and other workers
  rescue its tasks.
- Each child is in a process group of its own: a Ctrl-C at a terminal signals the whole
  foreground group, and children would begin draining while the API still accepts
  tasks and be started again. Only the supervisor signals them, once, in order.
- A child dies with its supervisor (``die_with_parent``), even one killed with -9.

Every start, exit (with its status) and restart is one structured log line naming the
child's pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bananastand.settings import Settings

log = logging.getLogger(__name__)

#: How long past the grace period a stopping child may take to hand its tasks back and
#: close its database before it is killed.
STOP_MARGIN_S = 10.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """The delay before a dead child starts again: ``first_s`` doubled with each death
    in a row, at most ``cap_s``; a child that ran ``steady_s`` was healthy, and its death
    counts as the first again."""

    first_s: float = 0.5
    cap_s: float = 30.0
    steady_s: float = 60.0

    def delay(self, deaths_in_a_row: int) -> float:
        return float(min(self.cap_s, self.first_s * 2 ** (deaths_in_a_row - 1)))


class Supervisor:
    """Keeps ``count`` copies of ``command`` running until ``stop``."""

    def __init__(
        self,
        count: int,
        command: Sequence[str],
        *,
        grace_s: float,
        env: Mapping[str, str] | None = None,
        backoff: Backoff = Backoff(),
        stop_margin_s: float = STOP_MARGIN_S,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        """``on_exit``: called with the pid of each child that has exited."""
        self._count = count
        self._on_exit = on_exit
        self._command = list(command)
        self._env = dict(env) if env is not None else None
        self._grace_s = grace_s
        self._backoff = backoff
        self._stop_margin_s = stop_margin_s
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._slots: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    @property
    def pids(self) -> list[int]:
        """The children running now."""
        return sorted(process.pid for process in self._children.values())

    async def start(self) -> None:
        self._slots = [
            asyncio.create_task(self._keep(slot), name=f"worker-process-{slot}")
            for slot in range(self._count)
        ]

    async def stop(self) -> None:
        """Drain every child (SIGTERM), kill those that outlive the grace period."""
        self._stopping.set()
        for process in self._children.values():
            _signal(process, signal.SIGTERM)
        if not self._slots:
            return
        _done, late = await asyncio.wait(self._slots, timeout=self._grace_s + self._stop_margin_s)
        for process in self._children.values():
            log.error(
                "worker process outlived the grace period; killing it",
                extra={"pid": process.pid, "grace_seconds": self._grace_s},
            )
            _signal(process, signal.SIGKILL)
        await asyncio.gather(*late)

    async def _keep(self, slot: int) -> None:
        loop = asyncio.get_running_loop()
        deaths = 0
        while not self._stopping.is_set():
            started = loop.time()
            ended = await self._run_once(slot)
            if self._stopping.is_set():
                return
            deaths = 1 if loop.time() - started >= self._backoff.steady_s else deaths + 1
            delay = self._backoff.delay(deaths)
            log.warning(
                "restarting worker process",
                extra={"slot": slot, **ended, "delay_seconds": delay},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _run_once(self, slot: int) -> dict[str, object]:
        """Start the slot's child and wait for it to exit: how it ended, as log fields
        (its pid and exit status; none when it did not start)."""
        try:
            # A session of its own, hence a process group of its own (uvloop, which
            # uvicorn runs on, has no ``process_group``).
            process = await asyncio.create_subprocess_exec(
                *self._command,
                env=self._env,
                start_new_session=True,
                stdin=asyncio.subprocess.DEVNULL,  # it has no terminal to read from
            )
        except Exception:  # whatever it was, the slot lives on and tries again later
            log.exception("worker process did not start", extra={"slot": slot})
            return {}
        self._children[slot] = process
        log.info("worker process started", extra={"slot": slot, "pid": process.pid})
        if self._stopping.is_set():  # ``stop`` came while it was starting
            _signal(process, signal.SIGTERM)
        try:
            status = await process.wait()
        finally:
            del self._children[slot]
        if self._on_exit is not None:
            self._on_exit(process.pid)
        # Stopping, SIGTERM is what was asked for: it ends a child still starting, whose
        # handlers (drain, exit 0) are not in place yet.
        expected = self._stopping.is_set() and status in (0, -signal.SIGTERM)
        ended = {"pid": process.pid, **_describe(status)}
        log.log(
            logging.INFO if expected else logging.WARNING,
            "worker process exited",
            extra={"slot": slot, **ended},
        )
        return ended


def _describe(status: int) -> dict[str, object]:
    """An exit status as log fields: a negative status is the signal that ended it."""
    if status < 0:
        return {"exit_status": status, "signal": signal.Signals(-status).name}
    return {"exit_status": status}


def _signal(process: asyncio.subprocess.Process, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has just exited
        process.send_signal(signum)


def worker_supervisor(settings: Settings, count: int) -> Supervisor:
    """``count`` supervised ``bananastand worker`` processes for the API of ``settings``.

    The parent has migrated the schema (``--no-migrate``). The children read the same
    environment and ``BANANASTAND_CONFIG`` file; what ``serve`` took from its command
    line is passed on: the public URL (callbacks and result links name the API's
    address) and the networks outbound fetches may reach (``--allow-loopback``).
    """
    command = [sys.executable, "-m", "bananastand", "worker", "--no-migrate"]
    command += ["--supervisor-pid", str(os.getpid())]
    env = {
        **os.environ,
        "BANANASTAND_PUBLIC_URL": settings.effective_public_url,
        "BANANASTAND_ALLOW_PRIVATE_NETWORKS": ",".join(settings.allow_private_networks),
    }
    from bananastand.metrics import forget_process, multiprocess_directory

    return Supervisor(
        count,
        command,
        grace_s=settings.shutdown_grace_seconds,
        env=env,
        # Summing the children's metrics (``serve`` made the folder): a dead child's
        # tasks in flight are no longer in flight.
        on_exit=forget_process if multiprocess_directory() is not None else None,
    )


#: Linux's ``prctl`` option that signals a process when its parent ends.
_PR_SET_PDEATHSIG = 1


def die_with_parent(supervisor_pid: int) -> bool:
    """In a supervised child: be sent SIGTERM when the supervisor ends, however it ends.

    Linux's ``PR_SET_PDEATHSIG``, set by the child itself: the kernel signals it the
    moment the parent dies, even of ``kill -9``, where the parent runs no code, and
    without a poll of ``getppid`` in the worker's loop. SIGTERM drains the orphan as any
    stop does, handing its tasks back. Set here rather than in the parent's
    ``preexec_fn``, which is unsafe in a process that runs threads. Elsewhere (no
    ``prctl``) an orphan runs until it is stopped, as a ``bananastand worker`` does.

    False when the supervisor is gone already (it died before the signal was set).
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return os.getppid() == supervisor_pid

"""Integration: the supervisor of ``serve --worker-processes`` with real child processes
(small Python programs standing in for ``bananastand worker``): the crash-loop backoff
that keeps a child that cannot start from spinning, and the kill of a child that
outlives the grace period. ``test_worker_processes`` runs it inside ``serve``."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

from bananastand.supervisor import Backoff, Supervisor
from waiting import wait_for_async

pytestmark = pytest.mark.no_database


def records_of(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage() == message]


async def wait_for_records(
    caplog: pytest.LogCaptureFixture, message: str, count: int
) -> list[logging.LogRecord]:
    """The first ``count`` records of ``message``, once there are as many (a generous
    deadline: each one is a Python start on a busy machine)."""
    found = await wait_for_async(
        lambda: records_of(caplog, message),
        lambda found: len(found) >= count,
        what=lambda: f"{count} {message!r} lines came: {caplog.text[-2000:]}",
    )
    return found[:count]


def restarts_of_a_dying_child(
    caplog: pytest.LogCaptureFixture, backoff: Backoff, *, exit_status: int, count: int
) -> list[logging.LogRecord]:
    """The first ``count`` restart lines of a supervisor whose one child exits at once."""
    caplog.set_level(logging.INFO, logger="bananastand.supervisor")
    command = [sys.executable, "-c", f"raise SystemExit({exit_status})"]
    supervisor = Supervisor(1, command, grace_s=1, backoff=backoff)

    async def run() -> list[logging.LogRecord]:
        await supervisor.start()
        try:
            return await wait_for_records(caplog, "restarting worker process", count)
        finally:
            await supervisor.stop()

    return asyncio.run(run())


def test_a_child_that_keeps_dying_is_restarted_ever_later_up_to_the_cap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backoff = Backoff(first_s=0.01, cap_s=0.04, steady_s=3600)
    restarts = restarts_of_a_dying_child(caplog, backoff, exit_status=3, count=5)
    assert [record.delay_seconds for record in restarts] == [0.01, 0.02, 0.04, 0.04, 0.04]
    assert {record.exit_status for record in restarts} == {3}
    assert len({record.pid for record in restarts}) == 5  # each names the child that died
    # (The last child may end by the SIGTERM of ``stop`` instead.)
    deaths = [r for r in records_of(caplog, "worker process exited") if r.exit_status == 3]
    assert len({record.pid for record in deaths}) >= 5  # a new process each time
    assert all(record.levelno == logging.WARNING for record in deaths)


def test_a_child_that_stayed_up_long_enough_is_restarted_at_the_first_delay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # steady_s=0: every run counts as a healthy one, so no death follows another.
    backoff = Backoff(first_s=0.01, cap_s=30, steady_s=0)
    restarts = restarts_of_a_dying_child(caplog, backoff, exit_status=1, count=3)
    assert [record.delay_seconds for record in restarts] == [0.01, 0.01, 0.01]


def test_a_command_that_cannot_start_is_retried_with_the_backoff(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="bananastand.supervisor")
    backoff = Backoff(first_s=0.01, cap_s=0.02, steady_s=3600)
    supervisor = Supervisor(1, [str(tmp_path / "missing")], grace_s=1, backoff=backoff)

    async def run() -> list[logging.LogRecord]:
        await supervisor.start()
        try:
            return await wait_for_records(caplog, "restarting worker process", 3)
        finally:
            await supervisor.stop()

    restarts = asyncio.run(run())
    assert [record.delay_seconds for record in restarts] == [0.01, 0.02, 0.02]
    assert len(records_of(caplog, "worker process did not start")) >= 3
    assert records_of(caplog, "worker process started") == []


def test_stop_kills_a_child_that_outlives_the_grace_period(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="bananastand.supervisor")
    ready = tmp_path / "ready"
    stubborn = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "pathlib.Path(sys.argv[1]).touch()\n"
        "time.sleep(600)\n"
    )
    supervisor = Supervisor(
        1, [sys.executable, "-c", stubborn, str(ready)], grace_s=0.1, stop_margin_s=0.1
    )

    async def run() -> None:
        await supervisor.start()
        await wait_for_async(ready.exists, what="the child started")
        await supervisor.stop()

    asyncio.run(run())
    [started] = records_of(caplog, "worker process started")
    [killed] = records_of(caplog, "worker process outlived the grace period; killing it")
    [exited] = records_of(caplog, "worker process exited")
    assert killed.pid == exited.pid == started.pid
    assert exited.signal == "SIGKILL"
    assert supervisor.pids == []
    assert records_of(caplog, "restarting worker process") == []  # stopping: never again

"""Acceptance: what the ``bananastand`` command costs before it does anything: the retries of a
server
that is not there, and what the admin commands import and run to reach the database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bananastand.client import Client, RetryPolicy, TransportError
from bananastand.client.cli import retry_policy
from conftest import database_env, free_port
from test_cli import create_key

REFUSED = TransportError("refused", url="http://127.0.0.1:9", unreachable="connection refused")
DROPPED = TransportError("GET http://127.0.0.1:9/: ReadError")


def retried_for(policy: RetryPolicy, error: Exception) -> float:
    """Seconds the policy would sleep in all, each delay taken in full."""
    elapsed, attempt = 0.0, 1
    while (delay := policy.delay(attempt, error, elapsed)) is not None:
        elapsed += delay
        attempt += 1
    return elapsed


def test_the_cli_gives_up_on_a_server_it_cannot_reach_within_a_second() -> None:
    retry = retry_policy()
    assert retry.delay(2, REFUSED, elapsed_s=retry.unreachable_budget_s or 0) is None
    for _ in range(200):  # the delays are random; the bound holds for every draw
        assert retried_for(retry, REFUSED) <= 1.0
    # Dropped connections (the server may be restarting) keep the usual retries.
    assert retry.delay(2, DROPPED, elapsed_s=1.0) is not None


def test_the_sdk_default_still_retries_unreachable_servers() -> None:
    """The SDK's documented policy (README): max_attempts=6 within budget_s=120."""
    assert RetryPolicy().delay(2, REFUSED, elapsed_s=1.0) is not None
    assert RetryPolicy().delay(6, REFUSED, elapsed_s=1.0) is None


def test_a_refused_connection_is_told_apart() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with (
        Client(url, "k", retry=RetryPolicy(max_attempts=1)) as client,
        pytest.raises(TransportError) as raised,
    ):
        client.get("task_x")
    assert raised.value.unreachable == "connection refused"
    assert raised.value.url == url


def loaded_by(data_dir: Path, *args: str) -> set[str]:
    """The modules a ``bananastand ARGS`` run imports (in a fresh interpreter)."""
    script = (
        "import sys\n"
        "from bananastand.cli import main\n"
        f"sys.argv = ['bananastand', *{list(args)!r}]\n"
        "try:\n    main()\n"
        "except SystemExit as done:\n    assert not done.code, done.code\n"
        "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={
            "BANANASTAND_DATA_DIR": str(data_dir),
            **database_env(data_dir),
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stderr.split())


def test_admin_commands_open_the_database_alone(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _, account, _ = create_key(data_dir)  # a fresh folder: this one runs the migrations
    # The server's web stack, the providers, the migrations' tooling, and the client's SDK
    # (its commands share the entry point).
    heavy = {"fastapi", "bananastand.app", "bananastand.providers.registry", "alembic"}
    heavy |= {"bananastand.client.client", "httpx"}
    for args in (
        ["keys", "list"],
        ["accounts", "show", account],
        ["credits", "add", "5", "--account", account],
        ["maintenance", "status"],
        ["models", "disable", "nano-banana-pro"],
    ):
        assert not heavy & loaded_by(data_dir, *args), args

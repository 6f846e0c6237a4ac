"""The ``bananastand`` command: serve, run a worker alone, manage keys.

Scripts and tests drive these commands, so their names and the shape of their output
(the key alone on the last line of ``keys create``) are part of the interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, TypeVar

import typer
import uvicorn
from rich.console import Console

from bananastand import logs
from bananastand.accounts import Accounts, NewKey
from bananastand.app import Runtime, close_runtime, create_app, open_runtime
from bananastand.errors import ApiError
from bananastand.settings import Settings

T = TypeVar("T")

app = typer.Typer(help="bananastand: self-hosted image-generation jobs.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
webhooks_app = typer.Typer(help="Callback (webhook) signing secrets.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")

console = Console(highlight=False, soft_wrap=True)


def _settings(**overrides: object) -> Settings:
    given = {name: value for name, value in overrides.items() if value is not None}
    settings = Settings(**given)  # type: ignore[arg-type]
    logs.configure(settings.log_level, settings.log_format)
    return settings


def _with_accounts(settings: Settings, action: Callable[[Accounts], Awaitable[T]]) -> T:
    return _with_runtime(settings, lambda runtime: action(runtime.services.accounts))


def _with_runtime(settings: Settings, action: Callable[[Runtime], Awaitable[T]]) -> T:
    """Run one admin action; a refusal is one clear line on stderr and exit status 1."""

    async def run() -> T:
        runtime = await open_runtime(settings, run_worker=False)
        try:
            return await action(runtime)
        finally:
            await close_runtime(runtime)

    try:
        return asyncio.run(run())
    except ApiError as exc:
        Console(stderr=True, highlight=False).print(f"error: {exc.msg}")
        raise typer.Exit(1) from None


def _banner(settings: Settings, first_key: NewKey | None, live: str | None) -> None:
    base = settings.effective_public_url
    console.print(f"[bold]bananastand[/] serving on {base}  (docs: {base}/docs)")
    console.print(f"data folder: {settings.data_dir.resolve()}")
    console.print(
        f"live keys run on: {live}"
        if live
        else "live keys: no provider configured (createTask answers 505); test keys use the sandbox"
    )
    if first_key is None:
        console.print("make a key with: bananastand keys create --test   (or without --test)")
        return
    key = first_key.secret
    console.print(f"\nA test key was made for you (shown once, runs on the sandbox):\n  {key}\n")
    console.print("Create a task:")
    print(
        f"  curl -s {base}/api/v1/jobs/createTask -H 'Authorization: Bearer {key}' "
        "-H 'Content-Type: application/json' "
        '-d \'{"model":"nano-banana-pro","input":{"prompt":"a banana in sunglasses"}}\''
    )
    console.print("Then look at it (put the taskId in):")
    print(
        f"  curl -s '{base}/api/v1/jobs/recordInfo?taskId=TASK_ID' -H 'Authorization: Bearer {key}'"
    )
    sys.stdout.flush()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    worker: Annotated[bool, typer.Option(help="Also run tasks in this process.")] = True,
) -> None:
    """Serve the API (and, by default, a worker) on the configured database."""
    settings = _settings(host=host, port=port)

    async def first_start(accounts: Accounts) -> NewKey | None:
        if await accounts.count_accounts() > 0:
            return None
        return await accounts.create_key(name="first test key", is_test=True)

    first_key = _with_accounts(settings, first_start)
    live = "sandbox" if settings.live_provider.value == "sandbox" else None
    _banner(settings, first_key, live)
    config = uvicorn.Config(
        create_app(settings, run_worker=worker),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )
    _DrainingServer(config).run()


class _DrainingServer(uvicorn.Server):
    """Exits with status 0 after a graceful SIGTERM/SIGINT drain.

    uvicorn re-raises the caught signal once it has shut down, so the process would look
    killed to its supervisor although it stopped cleanly (``bananastand worker`` exits 0
    too). Errors during shutdown still propagate.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


@app.command("worker")
def run_worker() -> None:
    """Run tasks only (no HTTP); run as many as you like beside `serve --no-worker`."""
    settings = _settings()

    async def main() -> None:
        runtime = await open_runtime(settings, run_worker=True)
        assert runtime.worker is not None
        assert runtime.sender is not None
        sender = asyncio.create_task(runtime.sender.run(), name="webhook-sender")
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, runtime.worker.stop)
        try:
            await runtime.worker.run()
        finally:
            runtime.sender.stop()
            await sender
            await close_runtime(runtime)

    asyncio.run(main())


@keys_app.command("create")
def create_key(
    name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = "",
    test: Annotated[bool, typer.Option("--test", help="A test key: runs on the sandbox.")] = False,
    account: Annotated[
        str | None, typer.Option(help="Add to this account (default: a new account).")
    ] = None,
) -> None:
    """Make a key; the key itself is the last line of output, shown only this once."""
    settings = _settings()
    made = _with_accounts(
        settings, lambda accounts: accounts.create_key(account_id=account, name=name, is_test=test)
    )
    kind = "test" if made.key.is_test else "live"
    console.print(
        f"key id: {made.key.id}  account: {made.key.account_id}  kind: {kind}", soft_wrap=True
    )
    print(made.secret)


@keys_app.command("list")
def list_keys(
    account: Annotated[str | None, typer.Option(help="Only this account's keys.")] = None,
) -> None:
    settings = _settings()
    found = _with_accounts(settings, lambda accounts: accounts.list_keys(account))
    for key in found:
        status = "revoked" if key.revoked_at else "active"
        kind = "test" if key.is_test else "live"
        print(f"{key.id}\t{key.account_id}\t{kind}\t{status}\t{key.display_prefix}…\t{key.name}")


@keys_app.command("revoke")
def revoke_key(key_id: str) -> None:
    """Revoke a key; every server stops accepting it within the key cache time."""
    settings = _settings()
    _with_accounts(settings, lambda accounts: accounts.revoke_key(key_id))
    print(f"revoked {key_id}")


@webhooks_app.command("secret")
def webhook_secret(
    account: Annotated[str, typer.Option(help="The account whose secret to show.")],
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Make a new secret; the old one signs too for a while.")
    ] = False,
) -> None:
    """Show (or rotate) the secret callbacks of an account are signed with."""
    settings = _settings()

    async def action(runtime: Runtime) -> str:
        found = await runtime.services.webhooks.secret(account, rotate=rotate)
        return found.secret

    print(_with_runtime(settings, action))


def main() -> None:
    app()

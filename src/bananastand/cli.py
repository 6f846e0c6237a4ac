"""The ``bananastand`` command: serve, run a worker alone, manage keys.

Scripts and tests drive these commands, so their names and the shape of their output
(the key alone on the last line of ``keys create``) are part of the interface.

The server side (FastAPI, SQLAlchemy, google-genai...) is imported inside the commands
that use it: the client commands (``generate``, ``batch``, ``status``) share this entry
point, and importing the server for them cost ~1.1 s of start-up and CPU per run. Only
``serve`` and ``worker`` open the whole runtime; the admin commands open the database
and what they use of it (``admin_runtime``).

Errors are one line on stderr, never a traceback; exit statuses (the full table in
``bananastand.client.cli``): 0 ok, 1 a task failed (``credits audit``: the ledger
disagrees), 2 usage (bad arguments, unknown ids, missing files, bad settings), 3 auth or
credits (401, 402), 4 server, network or database.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, TypeVar

import orjson
import typer
from rich.console import Console

from bananastand.client.cli import NOT_STARTED, TASK_FAILED, fail
from bananastand.client.cli import register as register_client_commands
from bananastand.client.cli import run as run_app
from bananastand.ids import now_ms

if TYPE_CHECKING:
    from bananastand.accounts import Accounts, NewKey
    from bananastand.admin_runtime import AdminServices
    from bananastand.settings import Settings

T = TypeVar("T")

app = typer.Typer(help="bananastand: self-hosted image-generation jobs.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
files_app = typer.Typer(help="Manage stored files.", no_args_is_help=True)
app.add_typer(files_app, name="files")
accounts_app = typer.Typer(
    help="Create, list, show accounts and set their limits.", no_args_is_help=True
)
app.add_typer(accounts_app, name="accounts")
credits_app = typer.Typer(
    help="Your balance (no subcommand); grant credits and audit the ledger (admin)."
)
app.add_typer(credits_app, name="credits")
maintenance_app = typer.Typer(
    help="Maintenance mode: createTask answers 455, reads keep working.", no_args_is_help=True
)
app.add_typer(maintenance_app, name="maintenance")
models_app = typer.Typer(help="Switch models off and on (505 while off).", no_args_is_help=True)
app.add_typer(models_app, name="models")
webhooks_app = typer.Typer(help="Callback (webhook) signing secrets.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")

console = Console(highlight=False, soft_wrap=True)


def _settings(*, starting: bool = False, **overrides: object) -> Settings:
    from bananastand.admin_runtime import load_settings

    return load_settings(starting=starting, **overrides)


def _with_accounts(
    settings: Settings,
    action: Callable[[Accounts], Awaitable[T]],
    *,
    migrate: bool | None = None,
    starting: bool = False,
) -> T:
    return _with_services(
        settings, lambda services: action(services.accounts), migrate=migrate, starting=starting
    )


def _with_services(
    settings: Settings,
    action: Callable[[AdminServices], Awaitable[T]],
    *,
    migrate: bool | None = None,
    starting: bool = False,
) -> T:
    """Run one admin action on the database alone; errors are one line (``run_admin``)."""
    from bananastand.admin_runtime import run_admin

    return run_admin(settings, action, migrate=migrate, starting=starting)


NoMigrate = Annotated[
    bool,
    typer.Option(
        "--no-migrate",
        help="Do not migrate the schema at start (refuse one that is not this version's); "
        "for deploys that run `bananastand migrate` alone. Also BANANASTAND_AUTO_MIGRATE=false.",
    ),
]


def _banner(
    settings: Settings,
    first_key: NewKey | None,
    live: str | None,
    *,
    loopback: bool | None,
    worker_processes: int | None,
) -> None:
    """``loopback``: whether ``--allow-loopback`` opened this machine (None: not asked).
    ``worker_processes``: how many supervised worker processes run tasks (0: this process
    does; None: none here, ``--no-worker``)."""
    base = settings.effective_public_url
    console.print(f"[bold]bananastand[/] serving on {base}  (docs: {base}/docs)")
    console.print(f"data folder: {settings.data_dir.resolve()}")
    if worker_processes is None:
        console.print("tasks run: not here (--no-worker); start `bananastand worker` beside it")
    elif worker_processes == 0:
        console.print("tasks run: in this process (--worker-processes N: in N processes)")
    else:
        console.print(f"tasks run: in {worker_processes} worker processes, restarted if they die")
    console.print(
        f"live keys run on: {live}"
        if live
        else "live keys: no provider configured (createTask answers 505); test keys use the sandbox"
    )
    networks = ", ".join(settings.allow_private_networks)
    if loopback:
        console.print(
            f"callbacks and image_input may reach this machine ({networks}): "
            "BANANASTAND_ALLOW_PRIVATE_NETWORKS, set by make run (serve --allow-loopback)"
        )
    elif networks:
        console.print(
            f"callbacks and image_input may reach {networks} (BANANASTAND_ALLOW_PRIVATE_NETWORKS)"
        )
    elif loopback is False:
        console.print(
            "callbacks and image_input reach public addresses only (--allow-loopback "
            "applies on a loopback address, when BANANASTAND_ALLOW_PRIVATE_NETWORKS is unset)"
        )
    if not settings.billing:
        console.print("billing: off (BANANASTAND_BILLING=off): no credits are charged")
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
    worker: Annotated[
        bool, typer.Option(help="Run tasks (in this process, or in --worker-processes).")
    ] = True,
    worker_processes: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Run tasks in this many supervised `bananastand worker` processes instead "
            "of this one (0: in this one). Also BANANASTAND_WORKER_PROCESSES.",
        ),
    ] = None,
    allow_loopback: Annotated[
        bool,
        typer.Option(
            help="On a loopback address only: callbacks and image_input may reach this "
            "machine (127.0.0.0/8, ::1) unless BANANASTAND_ALLOW_PRIVATE_NETWORKS is set. "
            "`make run` passes it."
        ),
    ] = False,
    no_migrate: NoMigrate = False,
) -> None:
    """Serve the API (and, by default, a worker) on the configured database."""
    import uvicorn

    from bananastand.app import create_app
    from bananastand.metrics import shared_between_processes
    from bananastand.providers.registry import describe_live
    from bananastand.server import DrainingServer
    from bananastand.supervisor import worker_supervisor

    if not worker and worker_processes:
        raise typer.BadParameter("--no-worker runs no worker: leave out --worker-processes")
    settings = _settings(
        starting=True,
        host=host,
        port=port,
        auto_migrate=False if no_migrate else None,
        worker_processes=worker_processes,
    )
    loopback: bool | None = None
    if allow_loopback:
        opened = settings.allowing_loopback()
        loopback, settings = opened is not settings, opened

    async def first_start(accounts: Accounts) -> NewKey | None:
        if await accounts.count_accounts() > 0:
            return None
        return await accounts.create_key(name="first test key", is_test=True)

    # Migrated here, once, before any worker process starts (they start with --no-migrate).
    first_key = _with_accounts(settings, first_start, migrate=settings.auto_migrate, starting=True)
    processes = settings.worker_processes if worker else None
    _banner(
        settings, first_key, describe_live(settings), loopback=loopback, worker_processes=processes
    )
    # The children's metrics reach the API's /metrics through files they all write.
    with shared_between_processes() if processes else contextlib.nullcontext():
        api = create_app(
            settings,
            run_worker=processes == 0,
            supervisor=worker_supervisor(settings, processes) if processes else None,
        )
        config = uvicorn.Config(
            api,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=settings.access_log,
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
        )
        DrainingServer(config, api).run()


@app.command("worker")
def run_worker(
    no_migrate: NoMigrate = False,
    supervisor_pid: Annotated[
        int | None,
        typer.Option(hidden=True, help="Set by `serve --worker-processes`: exit with it."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Serve this worker's Prometheus metrics at /metrics on this port "
            "(on BANANASTAND_HOST; BANANASTAND_METRICS_TOKEN guards it when set).",
        ),
    ] = None,
) -> None:
    """Run tasks only (no HTTP but --metrics-port); run as many as you like beside
    `serve --no-worker`."""
    from bananastand.app import close_runtime, freeze_startup_objects, open_runtime
    from bananastand.metrics.endpoint import serve_metrics

    if supervisor_pid is not None:
        from bananastand.supervisor import die_with_parent

        if not die_with_parent(supervisor_pid):
            fail("the serve process that started this worker is gone", NOT_STARTED)
    settings = _settings(starting=True, auto_migrate=False if no_migrate else None)
    # Migrated (or checked) here, so that a schema error is one line, not a traceback.
    _with_services(settings, _nothing, migrate=settings.auto_migrate, starting=True)

    async def main() -> None:
        runtime = await open_runtime(settings, run_worker=True, worker_role="worker")
        assert runtime.worker is not None
        assert runtime.sender is not None
        freeze_startup_objects()
        endpoint = None
        if metrics_port is not None:
            try:
                endpoint = await serve_metrics(
                    settings.host,
                    metrics_port,
                    runtime.services.scrape.render,
                    settings.metrics_token.get_secret_value(),
                )
            except OSError as exc:
                await close_runtime(runtime)
                fail(f"--metrics-port {metrics_port}: {exc.strerror or exc}", NOT_STARTED)
        sender = asyncio.create_task(runtime.sender.run(), name="webhook-sender")
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, runtime.worker.stop)
        try:
            await runtime.worker.run()
        finally:
            runtime.sender.stop()
            await sender
            if endpoint is not None:
                endpoint.close()
            await close_runtime(runtime)

    asyncio.run(main())


async def _nothing(_services: AdminServices) -> None:
    return None


@app.command("migrate")
def migrate_database() -> None:
    """Bring the database's schema to this version (the only command that changes a
    database server's schema besides `serve`/`worker` at start)."""

    async def revision(_services: AdminServices) -> str:
        from bananastand.store import migrate

        return ", ".join(sorted(migrate.head_revisions()))

    at = _with_services(_settings(starting=True), revision, migrate=True, starting=True)
    print(f"the database is at revision {at}")


@app.command("fake-gemini")
def fake_gemini(
    port: Annotated[int, typer.Option(help="Port to listen on (loopback).")] = 8089,
    api_key: Annotated[str, typer.Option(help="The key clients must send.")] = "fake-key",
    delay_ms: Annotated[int, typer.Option(help="Latency of each success.")] = 0,
) -> None:
    """Serve a fake Gemini API on loopback, for demos and tests without Google."""
    from bananastand.fake_gemini import FakeGemini

    fake = FakeGemini(api_key=api_key, port=port, delay_s=delay_ms / 1000).start()
    console.print(f"fake Gemini API on {fake.base_url}; start bananastand with:")
    print(f"  GEMINI_API_KEY={api_key} GOOGLE_GEMINI_BASE_URL={fake.base_url} bananastand serve")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    fake.stop()


@keys_app.command("create")
def create_key(
    name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = "",
    test: Annotated[bool, typer.Option("--test", help="A test key: runs on the sandbox.")] = False,
    account: Annotated[
        str | None, typer.Option(help="Add to this account (default: a new account).")
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(help="When the key stops working: 2027-01-31, 2027-01-31T12:00Z, 30d, 12h."),
    ] = None,
) -> None:
    """Make a key; the key itself is the last line of output, shown only this once."""
    settings = _settings()
    expires_at = _parse_expiry(expires) if expires else None
    made = _with_accounts(
        settings,
        lambda accounts: accounts.create_key(
            account_id=account, name=name, is_test=test, expires_at=expires_at
        ),
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
        status = "active" if key.usable_at(now_ms()) else "revoked" if key.revoked_at else "expired"
        kind = "test" if key.is_test else "live"
        expiry = _format_ms(key.expires_at) if key.expires_at else "-"
        print(
            f"{key.id}\t{key.account_id}\t{kind}\t{status}\t{key.display_prefix}…"
            f"\t{expiry}\t{key.name}"
        )


@keys_app.command("revoke")
def revoke_key(key_id: str) -> None:
    """Revoke a key; every server stops accepting it within the key cache time."""
    settings = _settings()
    _with_accounts(settings, lambda accounts: accounts.revoke_key(key_id))
    print(f"revoked {key_id}")


@app.command("workers")
def list_workers() -> None:
    """The live worker processes, one a line: id, host, pid, role, started, last
    heartbeat, concurrency, tasks in flight."""
    from bananastand.membership import live_workers

    for w in _with_services(_settings(), lambda services: live_workers(services.store)):
        started, beat = _format_ms(w.started_at), _format_ms(w.heartbeat_at)
        print(
            f"{w.id}\t{w.host}\t{w.pid}\t{w.role}\t{started}\t{beat}\t{w.concurrency}\t{w.in_flight}"
        )


@files_app.command("sweep")
def sweep() -> None:
    """Delete uploads and results past their retention (safe beside running workers)."""
    from bananastand.retention import retention_rules
    from bananastand.retention import sweep as sweep_files
    from bananastand.storage import open_storage

    settings = _settings()

    async def run() -> int:
        # Files only: retention is decided by the storage's own timestamps, not the database.
        storage = open_storage(settings)
        try:
            return await sweep_files(storage, retention_rules(settings), now_ms=now_ms())
        finally:
            await storage.aclose()

    print(f"deleted {asyncio.run(run())} expired files")


_RELATIVE = re.compile(r"(\d+)([dhm])")


def _parse_expiry(text: str) -> int:
    """Epoch ms from an ISO date/time (UTC when no zone is given) or ``30d``/``12h``/``15m``."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[relative.group(2)]
        at = datetime.now(UTC) + timedelta(**{unit: int(relative.group(1))})
    else:
        try:
            at = datetime.fromisoformat(text.strip())
        except ValueError:
            raise typer.BadParameter(
                "expected an ISO date/time (2027-01-31) or a duration (30d, 12h, 15m)",
                param_hint="--expires",
            ) from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
    return int(at.timestamp() * 1000)


def _format_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


@accounts_app.command("create")
def create_account(
    name: Annotated[str, typer.Option(help="A label to recognise the account by.")] = "",
) -> None:
    """Make an account (with BANANASTAND_STARTING_CREDITS); its id is the last line."""
    made = _with_accounts(_settings(), lambda accounts: accounts.create_account(name))
    console.print(f"credits: {made.credits}  name: {made.name}")
    print(made.id)


@accounts_app.command("list")
def list_accounts() -> None:
    found = _with_accounts(_settings(), lambda accounts: accounts.list_accounts())
    for account in found:
        print(f"{account.id}\t{account.credits}\t{account.name}")


@accounts_app.command("show")
def show_account(account_id: str) -> None:
    """The account, its limits, keys and newest ledger rows, as JSON."""
    from bananastand.billing import account_details

    details = _with_services(
        _settings(),
        lambda services: account_details(services.accounts, services.billing, account_id),
    )
    print(orjson.dumps(details, option=orjson.OPT_INDENT_2).decode())


def _limit(value: str | None, *, whole: bool) -> tuple[bool, str | int | None]:
    """(given, value): ``default`` restores the server default; numbers for whole limits."""
    if value is None:
        return False, None
    if value == "default":
        return True, None
    if not whole:
        return True, value
    if not value.isdigit():
        raise typer.BadParameter(f"{value!r}: expected a whole number or 'default'")
    return True, int(value)


@accounts_app.command("set-limits")
def set_limits(
    account_id: str,
    create_rate: Annotated[
        str | None, typer.Option(help="createTask calls per key: 20/second, unlimited, default.")
    ] = None,
    read_rate: Annotated[
        str | None, typer.Option(help="Other calls per key: 20/second, unlimited, default.")
    ] = None,
    max_waiting: Annotated[
        str | None, typer.Option(help="Waiting tasks at most (0: no cap; default).")
    ] = None,
    monthly_cap: Annotated[
        str | None, typer.Option(help="Credits spent per calendar month at most (default: none).")
    ] = None,
) -> None:
    """Change an account's limits; every server sees them within the key cache time."""
    changes: dict[str, str | int | None] = {}
    for name, value, whole in (
        ("create_rate", create_rate, False),
        ("read_rate", read_rate, False),
        ("max_waiting", max_waiting, True),
        ("monthly_cap", monthly_cap, True),
    ):
        given, parsed = _limit(value, whole=whole)
        if given:
            changes[name] = parsed
    account = _with_accounts(_settings(), lambda accounts: accounts.set_limits(account_id, changes))
    print(orjson.dumps(account.to_admin(), option=orjson.OPT_INDENT_2).decode())


@credits_app.command("add")
def add_credits(
    amount: Annotated[int, typer.Argument(help="Credits to add (negative: take away).")],
    account: Annotated[str | None, typer.Option(help="The account's id.")] = None,
    key: Annotated[str | None, typer.Option(help="A key (its id or the key itself).")] = None,
    note: Annotated[str, typer.Option(help="Why, for the ledger.")] = "",
) -> None:
    """Grant credits; a ledger row records it. Prints the new balance last."""
    if (account is None) == (key is None):
        raise typer.BadParameter("give exactly one of --account and --key")

    async def grant(services: AdminServices) -> tuple[str, int]:
        account_id = account or await services.accounts.account_of_key(key or "")
        return account_id, await services.billing.grant(account_id, amount, note)

    account_id, balance = _with_services(_settings(), grant)
    console.print(f"account: {account_id}")
    print(balance)


@credits_app.command("audit")
def audit_credits() -> None:
    """Prove every balance equals its ledger sum; exit status 1 when one does not."""

    async def audit(services: AdminServices) -> tuple[int, list[str]]:
        found = await services.billing.audit()
        lines = [f"{d.kind} {d.id}: recorded {d.recorded}, ledger says {d.ledger}" for d in found]
        return await services.accounts.count_accounts(), lines

    checked, problems = _with_services(_settings(), audit)
    for line in problems:
        print(line)
    if problems:
        fail(
            f"{len(problems)} balances do not match the ledger: see the lines above",
            TASK_FAILED,
        )
    print(f"ok: {checked} accounts, every balance equals its ledger sum")


@maintenance_app.command("on")
def maintenance_on(
    message: Annotated[str, typer.Option(help="What createTask answers (code 455).")] = "",
) -> None:
    """New tasks are refused; reads work, tasks in flight finish. Every server sees it
    within BANANASTAND_SWITCH_POLL_SECONDS."""
    _with_services(_settings(), lambda services: services.switches.set_maintenance(True, message))
    print("maintenance: on")


@maintenance_app.command("off")
def maintenance_off() -> None:
    _with_services(_settings(), lambda services: services.switches.set_maintenance(False))
    print("maintenance: off")


@maintenance_app.command("status")
def maintenance_status() -> None:
    state = _with_services(_settings(), lambda services: services.switches.current())
    print(orjson.dumps(state.to_admin(), option=orjson.OPT_INDENT_2).decode())


def _switch_model(model: str, account: str | None, *, enabled: bool) -> None:
    _with_services(
        _settings(),
        lambda services: services.switches.set_model(model, enabled=enabled, account_id=account),
    )
    scope = f"account {account}" if account else "everyone"
    print(f"{model}: {'enabled' if enabled else 'disabled'} for {scope}")


@models_app.command("disable")
def disable_model(
    model: str,
    account: Annotated[str | None, typer.Option(help="Only for this account.")] = None,
) -> None:
    """createTask with this model answers 505 (for everyone, or one account)."""
    _switch_model(model, account, enabled=False)


@models_app.command("enable")
def enable_model(
    model: str,
    account: Annotated[str | None, typer.Option(help="Only for this account.")] = None,
) -> None:
    _switch_model(model, account, enabled=True)


@webhooks_app.command("secret")
def webhook_secret(
    account: Annotated[str, typer.Option(help="The account whose secret to show.")],
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Make a new secret; the old one signs too for a while.")
    ] = False,
) -> None:
    """Show (or rotate) the secret callbacks of an account are signed with."""

    async def action(services: AdminServices) -> str:
        found = await services.webhooks.secret(account, rotate=rotate)
        return found.secret

    print(_with_services(_settings(), action))


db_app = typer.Typer(help="Whole databases: copy one into another.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("copy")
def copy_database(
    source: Annotated[str, typer.Option("--from", help="The database URL to copy (read only).")],
    target: Annotated[str, typer.Option("--to", help="A new, empty database URL to copy into.")],
    with_tasks: Annotated[
        bool, typer.Option("--with-tasks", help="Tasks, callbacks, Idempotency-Keys too.")
    ] = False,
) -> None:
    """Copy accounts, keys, the ledger, webhook secrets and switches (and with --with-tasks
    the tasks) into an empty database, migrated first: e.g. SQLite to PostgreSQL."""
    from bananastand.db_copy import run

    run(source, target, with_tasks=with_tasks)


register_client_commands(app, credits_app)


def main() -> None:
    run_app(app)

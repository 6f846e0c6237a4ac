"""The ``bananastand`` command: its admin commands (keys, accounts, credits, switches...);
the role commands (serve, worker, migrate) are in ``cli_roles``, the client commands in
``client.cli``.

Scripts and tests drive these commands, so their names and the shape of their output
(the key alone on the last line of ``keys create``) are part of the interface.

The server side (FastAPI, SQLAlchemy, google-genai...) is imported inside the commands
that use it: the client commands (``generate``, ``batch``, ``status``) share this entry
point, and importing the server for them cost ~1.1 s of start-up and CPU per run. Only
``serve`` and ``worker`` open the whole runtime; the admin commands open the database
and what they use of it (``admin_runtime``).

Errors are one line on stderr, never a traceback; exit statuses (the full table in
``bananastand.client.exits``): 0 ok, 1 a task failed (``credits audit``: the ledger
disagrees), 2 usage (bad arguments, unknown ids, missing files, bad settings), 3 auth or
credits (401, 402), 4 server, network or database.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from bananastand.cli_common import console, env_settings, with_accounts, with_services
from bananastand.cli_roles import register as register_role_commands
from bananastand.client.cli import register as register_client_commands
from bananastand.client.exits import TASK_FAILED, fail
from bananastand.client.exits import run as run_app
from bananastand.ids import now_ms

if TYPE_CHECKING:
    from bananastand.admin_runtime import AdminServices

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

register_role_commands(app)


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
    settings = env_settings()
    expires_at = _parse_expiry(expires) if expires else None
    made = with_accounts(
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
    settings = env_settings()
    found = with_accounts(settings, lambda accounts: accounts.list_keys(account))
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
    settings = env_settings()
    with_accounts(settings, lambda accounts: accounts.revoke_key(key_id))
    print(f"revoked {key_id}")


@app.command("workers")
def list_workers() -> None:
    """The live worker processes, one a line: id, host, pid, role, started, last
    heartbeat, concurrency, tasks in flight."""
    for w in with_services(env_settings(), lambda services: services.store.live_workers()):
        started, beat = _format_ms(w.started_at), _format_ms(w.heartbeat_at)
        print(
            f"{w.id}\t{w.host}\t{w.pid}\t{w.role}\t{started}\t{beat}\t{w.concurrency}\t{w.in_flight}"
        )


@app.command("upstreams")
def list_upstreams() -> None:
    """The routed upstreams, one a line: name, kind, breaker state, consecutive failures,
    when it opened, and the models routed to it (with its place in each route)."""
    from bananastand.breakers import upstream_views
    from bananastand.providers.registry import route_plan

    settings = env_settings()
    found = with_services(settings, lambda services: services.store.breakers())
    for view in upstream_views(route_plan(settings), found):
        breaker = view["breaker"]
        opened = _format_ms(breaker["openedAt"]) if breaker["openedAt"] else "-"
        models = ",".join(f"{model}#{place}" for model, place in view["models"].items())
        print(
            f"{view['name']}\t{view['kind']}\t{breaker['state']}\t{breaker['failures']}"
            f"\t{opened}\t{models}"
        )


@files_app.command("sweep")
def sweep() -> None:
    """Delete uploads and results past their retention (safe beside running workers)."""
    from bananastand.retention import retention_rules
    from bananastand.retention import sweep as sweep_files
    from bananastand.storage import open_storage

    settings = env_settings()

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
    made = with_accounts(env_settings(), lambda accounts: accounts.create_account(name))
    console.print(f"credits: {made.credits}  name: {made.name}")
    print(made.id)


@accounts_app.command("list")
def list_accounts() -> None:
    found = with_accounts(env_settings(), lambda accounts: accounts.list_accounts())
    for account in found:
        print(f"{account.id}\t{account.credits}\t{account.name}")


@accounts_app.command("show")
def show_account(account_id: str) -> None:
    """The account, its limits, keys and newest ledger rows, as JSON."""
    from bananastand.billing import account_details

    details = with_services(
        env_settings(),
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
    account = with_accounts(
        env_settings(), lambda accounts: accounts.set_limits(account_id, changes)
    )
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

    account_id, balance = with_services(env_settings(), grant)
    console.print(f"account: {account_id}")
    print(balance)


@credits_app.command("audit")
def audit_credits() -> None:
    """Prove every balance equals its ledger sum; exit status 1 when one does not."""

    async def audit(services: AdminServices) -> tuple[int, list[str]]:
        found = await services.billing.audit()
        lines = [f"{d.kind} {d.id}: recorded {d.recorded}, ledger says {d.ledger}" for d in found]
        return await services.accounts.count_accounts(), lines

    checked, problems = with_services(env_settings(), audit)
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
    with_services(env_settings(), lambda services: services.switches.set_maintenance(True, message))
    print("maintenance: on")


@maintenance_app.command("off")
def maintenance_off() -> None:
    with_services(env_settings(), lambda services: services.switches.set_maintenance(False))
    print("maintenance: off")


@maintenance_app.command("status")
def maintenance_status() -> None:
    state = with_services(env_settings(), lambda services: services.switches.current())
    print(orjson.dumps(state.to_admin(), option=orjson.OPT_INDENT_2).decode())


def _switch_model(model: str, account: str | None, *, enabled: bool) -> None:
    with_services(
        env_settings(),
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

    print(with_services(env_settings(), action))


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

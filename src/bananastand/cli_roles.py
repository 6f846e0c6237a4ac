"""The role commands of ``bananastand``: ``serve`` (with ``--no-worker`` or
``--worker-processes N``), ``worker``, ``migrate``, and the fake Gemini API for trying
things out. Each builds only what its role needs (``app.open_runtime``); start-up
failures are one line and exit status 1 (``NOT_STARTED``), as service managers expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from bananastand.cli_common import console, env_settings, with_accounts, with_services
from bananastand.client.exits import NOT_STARTED, fail

if TYPE_CHECKING:
    from bananastand.accounts import Accounts, NewKey
    from bananastand.admin_runtime import AdminServices
    from bananastand.settings import Settings


def register(app: typer.Typer) -> None:
    """Add the role commands to ``app`` (the ``bananastand`` command)."""
    app.command()(serve)
    app.command("worker")(run_worker)
    app.command("migrate")(migrate_database)
    app.command("fake-gemini")(fake_gemini)


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
    live: list[str],
    *,
    loopback: bool | None,
    worker_processes: int | None,
) -> None:
    """``loopback``: whether ``--allow-loopback`` opened this machine (None: not asked).
    ``worker_processes``: how many supervised worker processes run tasks (0: this process
    does; None: none here, ``--no-worker``). ``live``: what live keys run on, a line each
    (``describe_routes``)."""
    base = settings.effective_public_url
    console.print(f"[bold]bananastand[/] serving on {base}  (web page: {base}/, docs: {base}/docs)")
    console.print(f"data folder: {settings.data_dir.resolve()}")
    if worker_processes is None:
        console.print("tasks run: not here (--no-worker); start `bananastand worker` beside it")
    elif worker_processes == 0:
        console.print("tasks run: in this process (--worker-processes N: in N processes)")
    else:
        console.print(f"tasks run: in {worker_processes} worker processes, restarted if they die")
    for line in live or [
        "live keys: no provider configured (createTask answers 505); test keys use the sandbox"
    ]:
        console.print(line, markup=False)  # "[routes]" is no style
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
    console.print(f"Open {base}/ in a browser and paste it, or create a task:")
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
    if not worker and worker_processes:
        raise typer.BadParameter("--no-worker runs no worker: leave out --worker-processes")
    settings = env_settings(
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

    processes = settings.worker_processes if worker else None
    if processes is not None:
        _check_providers(settings)
    # Migrated here, once, before any worker process starts (they start with --no-migrate).
    first_key = with_accounts(settings, first_start, migrate=settings.auto_migrate, starting=True)
    # The web stack is imported once the settings and the database are known to be good:
    # a start that cannot work says so without first loading it (~0.5 s).
    import uvicorn

    from bananastand.app import create_app
    from bananastand.metrics import shared_between_processes
    from bananastand.providers.registry import describe_routes
    from bananastand.server import DrainingServer
    from bananastand.supervisor import worker_supervisor

    _banner(
        settings,
        first_key,
        describe_routes(settings),
        loopback=loopback,
        worker_processes=processes,
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


def _check_providers(settings: Settings) -> None:
    """The upstreams' clients can be made (a Vertex AI project needs credentials, ...):
    else one line now, rather than a traceback when the workers start."""
    from bananastand.errors import ConfigurationError
    from bananastand.providers.registry import ProviderRegistry
    from bananastand.storage.links import LinkSigner

    # The clients are made and closed at once: a relay's links are never used here, so
    # they need not be signed with the server's own secret.
    unused_links = LinkSigner(b"only-checking-the-clients", settings.effective_public_url)
    try:
        registry = ProviderRegistry.from_settings(settings, links=unused_links)
    except ConfigurationError as exc:
        fail(f"{exc}: fix the config file or the settings", NOT_STARTED)
    asyncio.run(registry.aclose())


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
    from bananastand.errors import ConfigurationError
    from bananastand.metrics.endpoint import serve_metrics

    if supervisor_pid is not None:
        from bananastand.supervisor import die_with_parent

        if not die_with_parent(supervisor_pid):
            fail("the serve process that started this worker is gone", NOT_STARTED)
    settings = env_settings(starting=True, auto_migrate=False if no_migrate else None)
    # Migrated (or checked) here, so that a schema error is one line, not a traceback.
    with_services(settings, _nothing, migrate=settings.auto_migrate, starting=True)

    async def main() -> None:
        try:
            runtime = await open_runtime(settings, run_worker=True, worker_role="worker")
        except ConfigurationError as exc:
            fail(f"{exc}: fix the config file or the settings", NOT_STARTED)
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


def migrate_database() -> None:
    """Bring the database's schema to this version (the only command that changes a
    database server's schema besides `serve`/`worker` at start)."""

    async def revision(_services: AdminServices) -> str:
        from bananastand.store import migrate

        return ", ".join(sorted(migrate.head_revisions()))

    at = with_services(env_settings(starting=True), revision, migrate=True, starting=True)
    print(f"the database is at revision {at}")


def fake_gemini(
    port: Annotated[int, typer.Option(help="Port to listen on (loopback).")] = 8089,
    api_key: Annotated[str, typer.Option(help="The key clients must send.")] = "fake-key",
    delay_ms: Annotated[int, typer.Option(help="Latency of each success.")] = 0,
    batch_seconds: Annotated[
        float, typer.Option(min=0, help="A Batch API job completes this long after it was made.")
    ] = 10.0,
) -> None:
    """Serve a fake Gemini API on loopback, for demos and tests without Google."""
    from bananastand.fake_gemini import FakeGemini

    fake = FakeGemini(api_key=api_key, port=port, delay_s=delay_ms / 1000).start()
    fake.batches.complete_after_s = batch_seconds
    console.print(f"fake Gemini API on {fake.base_url}; start bananastand with:")
    print(f"  GEMINI_API_KEY={api_key} GOOGLE_GEMINI_BASE_URL={fake.base_url} bananastand serve")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    fake.stop()

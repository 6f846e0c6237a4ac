"""Builds the FastAPI app and the services behind it, from one Settings object."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from bananastand import __version__
from bananastand.accounts import Accounts
from bananastand.api import account, admin, files, health, hooks, jobs, models, uploads, webhooks
from bananastand.api.deps import Services
from bananastand.api.docs import install_docs
from bananastand.api.envelope import install_error_handlers
from bananastand.api.middleware import RequestContextMiddleware
from bananastand.batch_lane import batch_upstreams
from bananastand.billing import Billing
from bananastand.catalog import Catalog
from bananastand.events import TaskWatch
from bananastand.fetch import FetchPolicy, Resolver, SafeFetcher
from bananastand.files import Files
from bananastand.metrics import Metrics, multiprocess_directory
from bananastand.metrics.exposition import Scrape
from bananastand.ops import Switches
from bananastand.providers.registry import ProviderChoice, ProviderRegistry
from bananastand.providers.relay_hooks import UpstreamHooks
from bananastand.ratelimit import RateLimiter
from bananastand.results import RecordMaker
from bananastand.settings import Settings
from bananastand.storage import open_storage
from bananastand.storage.links import LinkSigner, load_secret
from bananastand.store import open_settings_store
from bananastand.store.ports import Store
from bananastand.supervisor import Supervisor
from bananastand.tasks import Tasks
from bananastand.wakeups import Topic, Wakeups
from bananastand.wakeups.buses import bus_for
from bananastand.web.page import install_web
from bananastand.webhooks.account import Webhooks
from bananastand.webhooks.sender import WebhookSender
from bananastand.worker import Worker

log = logging.getLogger(__name__)

DESCRIPTION = """\
Self-hosted, wire-compatible server for the hosted "Nano Banana Pro" jobs API.

Every answer of the API (`/api/...`, `/admin/...`) is an envelope
`{"code", "msg", "message", "data"}` sent with HTTP 200; `code` carries the outcome (200,
401, 402, 404, 422, 429, 455, 500, 501, 505). Authenticate with `Authorization: Bearer <key>`.

File links (`/files/...`) are plain downloads and answer real HTTP statuses: 403 for a
link this server did not sign, 410 for an expired one, 404 when the file is gone.
"""


@dataclass(slots=True)
class Runtime:
    """Everything one process runs; closed in reverse order of opening."""

    services: Services
    fetcher: SafeFetcher
    worker: Worker | None
    #: Runs wherever a worker runs (the worker's process ends the tasks).
    sender: WebhookSender | None = None
    wakeups: Wakeups = field(default_factory=Wakeups)
    #: The worker's clients of the upstreams: only a process that runs tasks builds them.
    providers: ProviderRegistry | None = None


async def open_runtime(
    settings: Settings,
    *,
    run_worker: bool,
    resolver: Resolver | None = None,
    worker_role: str = "serve",
    metrics: Metrics | None = None,
) -> Runtime:
    """``resolver`` replaces the system's name resolution for outbound fetches (tests);
    ``worker_role``: what the worker registry lists this process's worker as;
    ``metrics``: what this process counts (the app's middleware counts into it too)."""
    metrics = metrics if metrics is not None else Metrics()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = await open_settings_store(settings, migrate=settings.auto_migrate)
    storage = open_storage(settings)
    secret = await asyncio.to_thread(load_secret, settings.signing_secret, settings.data_dir)
    links = LinkSigner(secret, settings.effective_public_url)
    records = RecordMaker(links, settings.result_link_seconds, settings.result_retention_seconds)
    fetcher = SafeFetcher(
        FetchPolicy(
            allow=tuple(settings.allow_private_networks),
            max_bytes=settings.max_input_image_bytes,
            timeout_s=settings.fetch_timeout_seconds,
        ),
        resolver=resolver,
    )
    # What this process commits, every other process of the deployment hears of at once.
    wakeups = Wakeups(bus_for(settings))
    # Follows the tasks of open event streams; told of changes made by any process.
    watch = TaskWatch(store, poll_seconds=settings.events_poll_ms / 1000)
    wakeups.subscribe(Topic.TASKS, watch.nudge)
    sender = None
    worker: Worker | None = None
    providers = None

    def live_workers() -> int:
        """The worker processes sharing the upstream budgets (as of the last heartbeat)."""
        return worker.live_workers if worker is not None else 1

    if run_worker:
        providers = ProviderRegistry.from_settings(
            settings, live_workers=live_workers, links=links, wakeups=wakeups
        )
        # Its own fetcher: slow receivers never hold connections that image inputs need.
        webhook_policy = FetchPolicy(
            allow=tuple(settings.allow_private_networks),
            timeout_s=settings.webhook_timeout_seconds,
        )
        sender = WebhookSender(
            store, settings, SafeFetcher(webhook_policy, resolver=resolver), records, metrics
        )
        worker = Worker(
            store,
            settings,
            providers,
            storage,
            fetcher,
            links=links,
            wakeups=wakeups,
            role=worker_role,
            metrics=metrics,
            batch_upstreams=batch_upstreams(settings),
        )
        wakeups.subscribe(Topic.CALLBACKS, lambda _ids: sender.wake())
    accounts = Accounts(
        store,
        key_cache_seconds=settings.key_cache_seconds,
        starting_credits=settings.starting_credits,
        on_change=partial(wakeups.publish, Topic.CONFIG),
    )
    billing = Billing(store, settings)
    switches = Switches(
        store,
        poll_seconds=settings.switch_poll_seconds,
        on_change=partial(wakeups.publish, Topic.CONFIG),
    )
    wakeups.subscribe(Topic.CONFIG, lambda _ids: accounts.forget_cached())
    wakeups.subscribe(Topic.CONFIG, lambda _ids: switches.forget())
    provider_choice = ProviderChoice.from_settings(settings)
    tasks = Tasks(
        store,
        settings,
        provider_choice,
        accounts=accounts,
        billing=billing,
        switches=switches,
        watch=watch,
        links=links,
        wakeups=wakeups,
        metrics=metrics,
    )
    services = Services(
        settings=settings,
        store=store,
        accounts=accounts,
        tasks=tasks,
        records=records,
        storage=storage,
        files=Files(store, settings, storage, links, fetcher),
        billing=billing,
        switches=switches,
        catalog=Catalog(
            settings, billing=billing, switches=switches, provider_choice=provider_choice
        ),
        limiter=RateLimiter(settings.redis_url),
        webhooks=Webhooks(store, settings, on_resend=partial(wakeups.publish, Topic.CALLBACKS)),
        scrape=Scrape(
            metrics,
            store,
            multiprocess_dir=multiprocess_directory(),
            live_workers=partial(count_live_workers, store),
            upstreams=provider_choice.plan.routed if provider_choice.plan.configured else (),
        ),
        upstream_hooks=UpstreamHooks.from_settings(settings, store, wakeups),
    )
    await wakeups.start()
    return Runtime(
        services=services,
        fetcher=fetcher,
        worker=worker,
        sender=sender,
        wakeups=wakeups,
        providers=providers,
    )


async def count_live_workers(store: Store) -> int:
    """The live workers of the cluster, by the registry (for the scrape's gauge)."""
    return len(await store.live_workers())


async def close_runtime(runtime: Runtime) -> None:
    await runtime.services.tasks.watch.aclose()
    await runtime.wakeups.aclose()
    await runtime.fetcher.aclose()
    if runtime.sender is not None:
        await runtime.sender.aclose()
    if runtime.providers is not None:
        await runtime.providers.aclose()
    await runtime.services.storage.aclose()
    await runtime.services.store.close()


def end_streams(app: FastAPI) -> None:
    """End the app's open event streams, as the server begins to shut down.

    uvicorn waits for open connections to finish before it runs the lifespan's shutdown,
    so streams must end first, or SIGTERM would wait for them (``bananastand serve`` calls
    this from its server's shutdown; other ASGI servers wait up to their graceful timeout
    or the streams' ``events_max_stream_seconds``).
    """
    services: Services | None = getattr(app.state, "services", None)
    if services is not None:
        services.tasks.watch.close()


def freeze_startup_objects() -> None:
    """Called by each role's entry point once its runtime is built.

    What start-up made lives as long as the process: keep it out of the collector's full
    passes, which otherwise walk ~200k objects and stall every request (55-94 ms measured,
    the whole p99 of createTask under load) or every task of a worker.
    """
    gc.collect()
    gc.freeze()


def create_app(
    settings: Settings,
    *,
    run_worker: bool = True,
    supervisor: Supervisor | None = None,
    resolver: Resolver | None = None,
) -> FastAPI:
    """``supervisor``: worker processes started once the API's runtime is open and
    drained after its last request (``serve --worker-processes N``, with ``run_worker``
    off: tasks then run in those processes only)."""

    # Made before the runtime: the middleware, installed now, counts into it.
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await open_runtime(
            settings, run_worker=run_worker, resolver=resolver, metrics=metrics
        )
        app.state.services = runtime.services
        freeze_startup_objects()
        if supervisor is not None:
            await supervisor.start()
        worker_task = None
        if runtime.worker is not None:
            worker_task = asyncio.create_task(runtime.worker.run(), name="worker")
        sender_task = None
        if runtime.sender is not None:
            sender_task = asyncio.create_task(runtime.sender.run(), name="webhook-sender")
        try:
            yield
        finally:
            if supervisor is not None:
                await supervisor.stop()
            if runtime.worker is not None and worker_task is not None:
                runtime.worker.stop()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker_task
            # Stopped after the worker: callbacks of tasks ending during its drain still go out.
            if runtime.sender is not None and sender_task is not None:
                runtime.sender.stop()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender_task
            await close_runtime(runtime)

    app = FastAPI(
        title="bananastand",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Replaced by install_docs: FastAPI's own pages need a CDN.
        docs_url=None,
        redoc_url=None,
        # A trailing slash answers a 404 envelope, not a bare 307 that raise_for_status trips on.
        redirect_slashes=False,
        # Matched before anything else, without the cost of an included router.
        routes=list(jobs.polled.routes),
    )
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        )
    # Outermost: even a 500 answer carries the request id and the caller's quota.
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(account.router)
    app.include_router(admin.router)
    app.include_router(files.router)
    app.include_router(uploads.router)
    app.include_router(health.router)
    app.include_router(webhooks.router)
    app.include_router(hooks.router)
    install_docs(app)
    install_web(app, settings)
    return app

"""Which upstreams run a task: settled when the task is accepted (``ProviderChoice``),
looked up by the worker among the clients it built (``ProviderRegistry``), both from one
`RoutePlan`: the config file's [upstreams] and [routes], or the legacy settings' one
provider routed for every model."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from bananastand.errors import ConfigurationError, FeatureDisabledError, UpstreamError
from bananastand.providers.base import Provider
from bananastand.providers.limits import UpstreamLimiter, WorkerCount, one_process
from bananastand.providers.local_limiter import LocalLimiter
from bananastand.providers.sandbox import SandboxProvider
from bananastand.records import Task
from bananastand.settings import LiveProvider, Settings
from bananastand.storage.links import LinkSigner
from bananastand.upstreams import SANDBOX, RoutePlan, UpstreamConfig, UpstreamKind
from bananastand.wakeups import Wakeups

if TYPE_CHECKING:
    from bananastand.providers.google import GoogleProvider

log = logging.getLogger(__name__)


class ProviderChoice:
    """Which upstream a new task is for: configuration alone, no client.

    The API settles it as it accepts a task (the first upstream of the model's route; the
    worker tries the rest of the route after it); only a worker builds the providers that
    run them (``ProviderRegistry``), so an API process without a worker opens no
    connection to Google and never imports google-genai.
    """

    def __init__(self, plan: RoutePlan) -> None:
        self.plan = plan

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderChoice:
        plan = route_plan(settings)
        if not plan.live and settings.live_provider is not LiveProvider.AUTO:
            log.error(
                "live provider %s lacks its settings; live keys are disabled",
                settings.live_provider.value,
            )
        return cls(plan)

    def serves(self, model: str, *, is_test: bool) -> bool:
        """Whether a key of this kind may use ``model`` here at all."""
        return is_test or bool(self.plan.route(model))

    def provider_name_for(self, model: str, *, is_test: bool) -> str:
        """The provider a new task will run on, or 505 when live keys have none."""
        if is_test:
            return SANDBOX
        route = self.plan.route(model)
        if not route:
            raise FeatureDisabledError(f"no provider configured for {model}")
        return route[0]


class ProviderRegistry:
    """The clients of a worker, one per upstream, and the routes between them; test keys
    always use the sandbox."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        plan: RoutePlan | None = None,
    ) -> None:
        self._providers = dict(providers)
        self.plan = plan or RoutePlan({}, {}, configured=False)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        live_workers: WorkerCount = one_process,
        links: LinkSigner | None = None,
        wakeups: Wakeups | None = None,
    ) -> ProviderRegistry:
        """``live_workers``: how many worker processes share the upstream budgets (the
        live-worker registry's count); it splits them where Redis does not share them.
        ``links`` tell a relay our own links; ``wakeups`` carry upstreams' callbacks."""
        sandbox = SandboxProvider(
            delay_ms=settings.sandbox_delay_ms, batch_delay_ms=settings.sandbox_batch_delay_ms
        )
        providers: dict[str, Provider] = {sandbox.name: sandbox}
        plan = route_plan(settings)
        for name in plan.routed:
            providers[name] = _provider(
                name, plan.upstreams[name], settings, live_workers, links=links, wakeups=wakeups
            )
        return cls(providers, plan)

    def get(self, name: str) -> Provider:
        return self._providers[name]

    def route_for(self, model: str) -> list[Provider]:
        """The providers a live task of ``model`` is tried on, in order (empty: none)."""
        return [self._providers[name] for name in self.plan.route(model)]

    def route_of(self, task: Task) -> list[Provider]:
        """Test keys' tasks run on the sandbox alone; live ones along their model's route
        (or, for a task accepted before the routes changed, on the provider it was for)."""
        if task.provider == SANDBOX:
            return [self._providers[SANDBOX]]
        route = self.route_for(task.model)
        if not route and task.provider in self._providers:
            route = [self._providers[task.provider]]
        if not route:
            raise UpstreamError(f"no upstream is routed for {task.model} on this server")
        return route

    def breaker_policy(self, name: str) -> UpstreamConfig | None:
        """The table an upstream's breaker follows; None: it has none (the sandbox, and
        the legacy settings' one upstream: without [upstreams] nothing changes)."""
        return self.plan.upstreams.get(name) if self.plan.configured else None

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()


def route_plan(settings: Settings) -> RoutePlan:
    """The config file's upstreams and routes; without [upstreams], today's one live
    provider as one upstream named after its kind (``gemini``, ``vertex``; ``sandbox``
    when live keys run on the sandbox), routed for every model."""
    if settings.upstreams:
        routes = {model: tuple(names) for model, names in settings.routes.items()}
        return RoutePlan(dict(settings.upstreams), routes, configured=True)
    live = choose_live(settings)
    legacy = {
        LiveProvider.GEMINI: {
            "kind": UpstreamKind.GEMINI,
            "api_key": settings.google_api_key,
            "base_url": settings.google_gemini_base_url,
        },
        LiveProvider.VERTEX: {
            "kind": UpstreamKind.VERTEX,
            "project": settings.google_cloud_project,
            "location": settings.google_cloud_location,
        },
    }
    upstreams: dict[str, UpstreamConfig] = {}
    if live in legacy:
        table = UpstreamConfig.model_validate(legacy[live])
        upstreams[live.value] = table.inheriting(settings.upstream_defaults())
    routes = dict.fromkeys(settings.models, (live.value,)) if live else {}
    return RoutePlan(upstreams, routes, configured=False)


def choose_live(settings: Settings) -> LiveProvider | None:
    """Which provider live keys use: ``auto`` prefers Vertex AI when it is switched on
    (``GOOGLE_GENAI_USE_VERTEXAI``), else the Gemini API when an API key is set, else none.
    An explicit choice without what it needs (a key, a project) is none too."""
    chosen = settings.live_provider
    vertex_ready = bool(settings.google_cloud_project)
    if chosen is LiveProvider.AUTO:
        if settings.google_use_vertexai and vertex_ready:
            return LiveProvider.VERTEX
        return LiveProvider.GEMINI if settings.google_api_key else None
    if chosen is LiveProvider.GEMINI and not settings.google_api_key:
        return None
    if chosen is LiveProvider.VERTEX and not vertex_ready:
        return None
    return chosen


def describe_live(settings: Settings) -> str | None:
    """One line for the start banner: what live keys will run on, or None."""
    live = choose_live(settings)
    if live is LiveProvider.VERTEX:
        return (
            f"vertex (Vertex AI, project {settings.google_cloud_project or '(unset)'}, "
            f"location {settings.google_cloud_location})"
        )
    if live is LiveProvider.GEMINI:
        where = settings.google_gemini_base_url or "the Gemini API"
        return f"gemini ({where}, API key from GEMINI_API_KEY/GOOGLE_API_KEY)"
    return live.value if live else None


def describe_routes(settings: Settings) -> list[str]:
    """The start banner's lines on live keys: the config file's routes, one per model
    (a model without one answers 505), or the one legacy provider; empty: none."""
    plan = route_plan(settings)
    if not plan.configured:
        live = describe_live(settings)
        return [f"live keys run on: {live}"] if live else []
    unrouted = [model for model in settings.models if not plan.route(model)]
    return [
        "live keys are routed (BANANASTAND_CONFIG [routes], tried in order):",
        *(f"  {line}" for line in plan.describe()),
        *(f"  {model}: no route (createTask answers 505)" for model in unrouted),
    ]


def upstream_limiter(
    settings: Settings,
    scope: str,
    live_workers: WorkerCount,
    *,
    concurrency: int | None,
    per_minute: float,
) -> UpstreamLimiter:
    """The budget of one upstream or key (``scope``: its name): shared in Redis when
    there is one, else this process's share of it."""
    if settings.redis_url:
        # coredis is imported only by servers that share their limits in Redis.
        from bananastand.providers.redis_limiter import RedisLimiter

        return RedisLimiter(
            settings.redis_url,
            scope,
            concurrency=concurrency,
            per_minute=per_minute,
            workers=live_workers,
        )
    return LocalLimiter(concurrency=concurrency, per_minute=per_minute, workers=live_workers)


def _provider(
    name: str,
    config: UpstreamConfig,
    settings: Settings,
    live_workers: WorkerCount,
    *,
    links: LinkSigner | None,
    wakeups: Wakeups | None,
) -> Provider:
    if config.kind is UpstreamKind.JOBS_API:
        from bananastand.providers.relay import RelayProvider

        if links is None:
            raise ConfigurationError(f"upstream {name}: a relay needs this server's links")
        limiter = upstream_limiter(
            settings,
            name,
            live_workers,
            concurrency=config.concurrency,
            per_minute=config.requests_per_minute,
        )
        return RelayProvider.from_config(
            name, config, settings=settings, limiter=limiter, links=links, wakeups=wakeups
        )
    return _google_provider(name, config, settings, live_workers)


def _google_provider(
    name: str, config: UpstreamConfig, settings: Settings, live_workers: WorkerCount
) -> GoogleProvider:
    # google-genai takes ~0.6 s to import: only servers whose live keys use it pay for it.
    from bananastand.providers.google import GoogleProvider, KeyRest, UpstreamRetryPolicy

    retry = UpstreamRetryPolicy(
        timeout_s=config.timeout_seconds,
        max_attempts=config.max_attempts,
        budget_s=config.retry_budget_seconds,
        backoff_s=config.backoff_seconds,
    )
    keys = config.keys
    # The rate is per key (Google's quotas are); the upstream's limiter holds the pool's.
    limiter = upstream_limiter(
        settings,
        name,
        live_workers,
        concurrency=config.concurrency,
        per_minute=config.requests_per_minute * max(1, len(keys)),
    )
    if config.kind is UpstreamKind.VERTEX:
        return GoogleProvider.vertex(
            config.project,
            config.location,
            settings.models,
            retry=retry,
            limiter=limiter,
            name=name,
            base_url=config.base_url,
            upstream_model=config.model,
        )
    key_limiters = [
        upstream_limiter(
            settings,
            f"{name}/key{index}",
            live_workers,
            concurrency=None,
            per_minute=config.requests_per_minute,
        )
        for index in range(len(keys))
        if len(keys) > 1
    ]
    return GoogleProvider.gemini(
        keys,
        settings.models,
        base_url=config.base_url,
        retry=retry,
        limiter=limiter,
        name=name,
        key_limiters=key_limiters,
        key_rest=KeyRest(cooldown_s=config.key_cooldown_seconds),
        upstream_model=config.model,
    )

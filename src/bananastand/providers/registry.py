"""Which provider runs a task: settled when the task is accepted (``ProviderChoice``),
looked up by the worker among the clients it built (``ProviderRegistry``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bananastand.errors import FeatureDisabledError
from bananastand.providers.base import Provider
from bananastand.providers.limits import UpstreamLimiter, WorkerCount, one_process
from bananastand.providers.local_limiter import LocalLimiter
from bananastand.providers.sandbox import SandboxProvider
from bananastand.settings import LiveProvider, Settings

if TYPE_CHECKING:
    from bananastand.providers.google import GoogleProvider

log = logging.getLogger(__name__)


class ProviderChoice:
    """Which provider a new task runs on: configuration alone, no client.

    The API settles it as it accepts a task; only a worker builds the providers that run
    them (``ProviderRegistry``), so an API process without a worker opens no connection
    to Google and never imports google-genai.
    """

    def __init__(self, live: str | None) -> None:
        self.live = live

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderChoice:
        live = choose_live(settings)
        if live is None and settings.live_provider is not LiveProvider.AUTO:
            log.error(
                "live provider %s lacks its settings; live keys are disabled",
                settings.live_provider.value,
            )
        return cls(live.value if live else None)

    def provider_name_for(self, model: str, *, is_test: bool) -> str:
        """The provider a new task will run on, or 505 when live keys have none."""
        if is_test:
            return "sandbox"
        if self.live is None:
            raise FeatureDisabledError(f"no provider configured for {model}")
        return self.live


class ProviderRegistry:
    """The clients of a worker, one per provider; test keys always use the sandbox."""

    def __init__(self, providers: dict[str, Provider]) -> None:
        self._providers = providers

    @classmethod
    def from_settings(
        cls, settings: Settings, *, live_workers: WorkerCount = one_process
    ) -> ProviderRegistry:
        """``live_workers``: how many worker processes share the upstream budgets (the
        live-worker registry's count); it splits them where Redis does not share them."""
        sandbox = SandboxProvider(
            delay_ms=settings.sandbox_delay_ms, batch_delay_ms=settings.sandbox_batch_delay_ms
        )
        providers: dict[str, Provider] = {sandbox.name: sandbox}
        live = choose_live(settings)
        if live in (LiveProvider.GEMINI, LiveProvider.VERTEX):
            google = _google_provider(settings, live, live_workers)
            providers[google.name] = google
        return cls(providers)

    def get(self, name: str) -> Provider:
        return self._providers[name]

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()


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


def upstream_limiter(settings: Settings, scope: str, live_workers: WorkerCount) -> UpstreamLimiter:
    """The budget of one upstream (``scope``: its name): shared in Redis when there is
    one, else this process's share of it."""
    concurrency = settings.upstream_concurrency
    per_minute = settings.upstream_requests_per_minute
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


def _google_provider(
    settings: Settings, live: LiveProvider, live_workers: WorkerCount
) -> GoogleProvider:
    # google-genai takes ~0.6 s to import: only servers whose live keys use it pay for it.
    from bananastand.providers.google import GoogleProvider, UpstreamRetryPolicy

    retry = UpstreamRetryPolicy(
        timeout_s=settings.upstream_timeout_seconds,
        max_attempts=settings.upstream_max_attempts,
        budget_s=settings.upstream_retry_budget_seconds,
        backoff_s=settings.upstream_backoff_seconds,
    )
    limiter = upstream_limiter(settings, live.value, live_workers)
    if live is LiveProvider.VERTEX:
        return GoogleProvider.vertex(
            settings.google_cloud_project,
            settings.google_cloud_location,
            settings.models,
            retry=retry,
            limiter=limiter,
        )
    return GoogleProvider.gemini(
        settings.google_api_key,
        settings.models,
        base_url=settings.google_gemini_base_url,
        retry=retry,
        limiter=limiter,
    )

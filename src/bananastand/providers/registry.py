"""Which provider runs a task: settled when the task is accepted, looked up by the worker."""

from __future__ import annotations

import logging

from bananastand.errors import FeatureDisabledError
from bananastand.providers.base import Provider
from bananastand.providers.sandbox import SandboxProvider
from bananastand.settings import LiveProvider, Settings

log = logging.getLogger(__name__)


class ProviderRegistry:
    """Holds one instance per provider; test keys always use the sandbox."""

    def __init__(self, providers: dict[str, Provider], live: str | None) -> None:
        if live is not None and live not in providers:
            raise ValueError(f"live provider {live!r} is not among {sorted(providers)}")
        self._providers = providers
        self.live = live

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderRegistry:
        sandbox = SandboxProvider(delay_ms=settings.sandbox_delay_ms)
        providers: dict[str, Provider] = {sandbox.name: sandbox}
        live: str | None = None
        if settings.live_provider is LiveProvider.SANDBOX:
            live = sandbox.name
        elif settings.live_provider is not LiveProvider.AUTO:
            log.warning(
                "live provider %s is not available in this build; live keys are disabled",
                settings.live_provider.value,
            )
        return cls(providers, live)

    def provider_name_for(self, model: str, *, is_test: bool) -> str:
        """The provider a new task will run on, or 505 when live keys have none."""
        if is_test:
            return "sandbox"
        if self.live is None:
            raise FeatureDisabledError(f"no provider configured for {model}")
        return self.live

    def get(self, name: str) -> Provider:
        return self._providers[name]

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()

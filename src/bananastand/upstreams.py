"""Named upstreams and the routes between them, as the config file declares them.

An operator lists the services that can make an image (``[upstreams.NAME]``: a Gemini API
key pool, a Vertex AI project, a hosted jobs API) and, per model, the order to try them
in (``[routes]``). Secrets are ``"env:NAME"`` references, read from the environment when
the settings are: a missing one stops the process at start, naming it.

Without an ``[upstreams]`` table the legacy settings (``BANANASTAND_LIVE_PROVIDER``, the
Google variables) make one upstream named after its kind, routed for every model
(``providers.registry.route_plan``), so that one code path serves both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: The provider of test keys; not a name an upstream may take.
SANDBOX = "sandbox"

#: What an upstream's table inherits from the ``BANANASTAND_UPSTREAM_*`` settings when it
#: leaves them out; the settings take their defaults from here.
DEFAULT_CONCURRENCY = 8
DEFAULT_REQUESTS_PER_MINUTE = 60.0
DEFAULT_TIMEOUT_SECONDS = 300.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_RETRY_BUDGET_SECONDS = 120.0
DEFAULT_BACKOFF_SECONDS = 2.0
INHERITED = (
    "concurrency",
    "requests_per_minute",
    "timeout_seconds",
    "max_attempts",
    "retry_budget_seconds",
    "backoff_seconds",
)

#: Upstream names go into the tasks table (``provider``: 32 characters) and metric labels.
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_ENV_REF = "env:"


class UpstreamKind(StrEnum):
    GEMINI = "gemini"  # the Gemini API: a pool of API keys
    VERTEX = "vertex"  # Vertex AI: a project, a location, Google credentials
    JOBS_API = "jobs-api"  # a hosted jobs API speaking this server's own API


def resolve_secret(value: str) -> str:
    """``env:NAME`` is the environment variable ``NAME`` (which must be set and not
    empty); anything else is the secret itself."""
    if not value.startswith(_ENV_REF):
        return value
    name = value[len(_ENV_REF) :]
    found = os.environ.get(name, "")
    if not found:
        raise ValueError(f"the environment variable {name} is not set")
    return found


class UpstreamConfig(BaseModel):
    """One ``[upstreams.NAME]`` table; unknown fields are refused. Secrets (``api_keys``,
    ``api_key``, ``webhook_secret``) hold their resolved values once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: UpstreamKind
    api_keys: list[str] = Field(default_factory=list, repr=False)
    api_key: str = Field(default="", repr=False)
    base_url: str = ""
    #: A jobs API's file-stream-upload (default: ``base_url``).
    upload_base_url: str = ""
    #: The model name sent upstream (default: the caller's, or the model's ``upstream_id``).
    model: str = ""
    project: str = ""
    location: str = ""
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1)
    requests_per_minute: float = Field(default=DEFAULT_REQUESTS_PER_MINUTE, ge=0)
    timeout_seconds: float = Field(default=DEFAULT_TIMEOUT_SECONDS, gt=0)
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1)
    retry_budget_seconds: float = Field(default=DEFAULT_RETRY_BUDGET_SECONDS, ge=0)
    backoff_seconds: float = Field(default=DEFAULT_BACKOFF_SECONDS, ge=0)
    #: Consecutive failures that open the breaker; then no task goes here for the cool-down.
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_seconds: float = Field(default=30.0, ge=0)
    #: How long a key answered 429 rests when Google says not how long (``RetryInfo``).
    key_cooldown_seconds: float = Field(default=60.0, ge=0)
    # A jobs API's.
    idempotency_keys: bool = False
    webhook_secret: str = Field(default="", repr=False)
    poll_interval_seconds: float = Field(default=5.0, gt=0)

    @field_validator("api_keys")
    @classmethod
    def _resolve_keys(cls, value: list[str]) -> list[str]:
        return [resolve_secret(item) for item in value]

    @field_validator("api_key", "webhook_secret")
    @classmethod
    def _resolve(cls, value: str) -> str:
        return resolve_secret(value)

    @model_validator(mode="after")
    def _complete(self) -> UpstreamConfig:
        if self.kind is UpstreamKind.GEMINI and not self.keys:
            raise ValueError("kind gemini needs api_keys (or api_key)")
        if self.kind is UpstreamKind.VERTEX and not self.project:
            raise ValueError("kind vertex needs project")
        if self.kind is UpstreamKind.JOBS_API and not (self.base_url and self.api_key):
            raise ValueError("kind jobs-api needs base_url and api_key")
        return self

    @property
    def keys(self) -> tuple[str, ...]:
        """The API keys of the pool, ``api_key`` included, each once, in order."""
        return tuple(dict.fromkeys([*self.api_keys, *([self.api_key] if self.api_key else [])]))

    def inheriting(self, defaults: Mapping[str, object]) -> UpstreamConfig:
        """This table with the inherited fields it leaves out taken from ``defaults``."""
        unset = {name: defaults[name] for name in INHERITED if name not in self.model_fields_set}
        return self.model_copy(update=unset)


def check_upstreams(upstreams: Mapping[str, UpstreamConfig]) -> None:
    for name in upstreams:
        if name == SANDBOX:
            raise ValueError(f"{SANDBOX!r} is the test keys' provider: name the upstream otherwise")
        if not _NAME.match(name):
            raise ValueError(
                f"upstream name {name!r}: 1 to 32 of a-z, 0-9, '-' and '_', starting with a "
                "letter or digit"
            )


def check_routes(
    routes: Mapping[str, list[str]], upstreams: Iterable[str], models: Iterable[str]
) -> None:
    """Every route names known upstreams (each once) for a known model."""
    known, known_models = set(upstreams), set(models)
    for model, names in routes.items():
        if model not in known_models:
            raise ValueError(f"route {model!r}: no such model (see [models])")
        if not names:
            raise ValueError(f"route {model!r}: lists no upstream")
        for name in names:
            if name not in known:
                raise ValueError(f"route {model!r}: unknown upstream {name!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"route {model!r}: names an upstream twice")


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """The upstreams this server may call and, per model, their order (an empty route:
    live keys get 505 for that model)."""

    upstreams: Mapping[str, UpstreamConfig]
    routes: Mapping[str, tuple[str, ...]]
    #: Whether the config file declared them (False: synthesised from legacy settings).
    configured: bool

    def route(self, model: str) -> tuple[str, ...]:
        return self.routes.get(model, ())

    @property
    def live(self) -> bool:
        """Whether any model has a route for live keys."""
        return any(self.routes.values())

    def describe(self) -> list[str]:
        """One line per routed model, for the start banner and ``bananastand upstreams``."""
        return [
            f"{model} -> " + ", ".join(f"{name} ({self._kind(name)})" for name in names)
            for model, names in self.routes.items()
            if names
        ]

    def _kind(self, name: str) -> str:
        config = self.upstreams.get(name)
        return config.kind.value if config else name

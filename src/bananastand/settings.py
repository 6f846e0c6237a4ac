"""Every knob of bananastand, read from the environment once, at the entry point.

Scalar settings come from ``BANANASTAND_*`` variables. Structured tables (the model
registry, the price table) have built-in defaults and can be replaced by an optional TOML
file named by ``BANANASTAND_CONFIG``; environment variables win over the file.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bananastand import upstreams as up
from bananastand.addresses import HostList, is_loopback_host
from bananastand.contract import STANDARD_ASPECT_RATIOS, AspectRatio, OutputFormat, Resolution
from bananastand.ratelimit import parse_rate
from bananastand.upstreams import UpstreamConfig


class LiveProvider(StrEnum):
    """Which provider runs the tasks of live keys (test keys always use the sandbox)."""

    AUTO = "auto"  # Google when its credentials are present, else none (createTask: 505)
    SANDBOX = "sandbox"  # live keys run on the sandbox too: demos, tests of charged tasks
    GEMINI = "gemini"
    VERTEX = "vertex"


class ModelSpec(BaseModel):
    """One model name clients send, what it means upstream, and its own input rules.

    Adding a model is an entry here (or in the config file's ``[models]`` table): the
    rules below are checked at createTask, and the provider reads ``upstream_id`` and
    ``sends_image_size``.
    """

    upstream_id: str
    #: Whether clients may pick the resolution (Nano Banana has a fixed ~1K output).
    resolutions: list[Resolution] = Field(default_factory=lambda: list(Resolution))
    #: Whether ``imageConfig.imageSize`` goes upstream (models without a choice reject it).
    sends_image_size: bool = True
    aspect_ratios: list[AspectRatio] = Field(
        default_factory=lambda: [*STANDARD_ASPECT_RATIOS, AspectRatio.AUTO]
    )
    output_formats: list[OutputFormat] = Field(default_factory=lambda: list(OutputFormat))
    max_images: int = 8
    max_prompt_chars: int = 10_000
    #: Defaults for input fields the client leaves out (the hosted API's differ per model).
    defaults: dict[str, str] = Field(default_factory=dict)
    #: The model's own input field names, mapped to ours (``image_size`` -> ``aspect_ratio``).
    input_aliases: dict[str, str] = Field(default_factory=dict)


def _default_models() -> dict[str, ModelSpec]:
    return {
        "nano-banana-pro": ModelSpec(upstream_id="gemini-3-pro-image"),
        # Hosted API: prompt up to 20000 chars, image_input up to 14, aspect_ratio
        # default "auto", resolution 1K/2K/4K, output_format jpg (default) or png.
        "nano-banana-2": ModelSpec(
            upstream_id="gemini-3.1-flash-image-preview",
            max_images=14,
            max_prompt_chars=20_000,
            output_formats=[OutputFormat.JPG, OutputFormat.PNG],
            aspect_ratios=[*AspectRatio],
            defaults={"aspect_ratio": "auto", "output_format": "jpg"},
        ),
        # Hosted API: text-to-image only (edits are a separate model), prompt up to 5000
        # chars, the aspect ratio is called ``image_size`` (default 1:1), output_format
        # png (default) or jpeg; no resolution choice (Gemini 2.5 Flash Image is ~1K).
        "google/nano-banana": ModelSpec(
            upstream_id="gemini-2.5-flash-image",
            resolutions=[Resolution.R1K],
            sends_image_size=False,
            max_images=0,
            max_prompt_chars=5_000,
            output_formats=[OutputFormat.PNG, OutputFormat.JPG],
            input_aliases={"image_size": "aspect_ratio"},
        ),
    }


def _default_prices() -> dict[str, dict[Resolution, int]]:
    """nano-banana-pro's prices are the hosted API's; the others are ours, in proportion
    to Google's list prices for the lighter models. Every model needs a price per
    resolution it accepts (checked at start) unless billing is off."""
    return {
        "nano-banana-pro": {Resolution.R1K: 18, Resolution.R2K: 18, Resolution.R4K: 24},
        "nano-banana-2": {Resolution.R1K: 8, Resolution.R2K: 12, Resolution.R4K: 18},
        "google/nano-banana": {Resolution.R1K: 4},
    }


def _default_webhook_schedule() -> list[float]:
    """Standard Webhooks': now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h."""
    return [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0]


#: What ``serve --allow-loopback`` (``make run``) lets outbound fetches reach: this machine.
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BANANASTAND_", extra="ignore")

    # Where and how to serve.
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = ""  # empty: http://HOST:PORT of `serve`
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    access_log: bool = True
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"  # auto: text on a terminal

    # Storage of tasks and files.
    data_dir: Path = Path("var")
    database_url: str = ""  # empty: sqlite under data_dir
    sqlite_synchronous: str = "FULL"  # FULL survives power loss; NORMAL survives kill -9
    # PostgreSQL: connections per process (as many again may open under load), and how
    # long one statement may run before the server cancels it.
    database_pool_size: int = Field(default=10, ge=1, le=1000)
    database_statement_timeout_seconds: float = Field(default=30.0, gt=0)
    # `serve` and `worker` bring the schema to the newest version at start (False: they
    # refuse a schema that is not theirs; `bananastand migrate` runs the migrations).
    auto_migrate: bool = True

    # Requests.
    max_body_bytes: int = 256 * 1024
    idempotency_ttl_seconds: int = 24 * 3600
    key_cache_seconds: float = 5.0

    # Workers.
    # `serve` runs tasks in this many supervised `bananastand worker` processes, none in
    # its own (0: in its own, the embedded default).
    worker_processes: int = Field(default=0, ge=0, le=256)
    worker_concurrency: int = 16
    lease_seconds: float = 60.0
    max_attempts: int = 3
    # How often an idle worker (and callback sender) looks without a wake-up: wake-ups
    # (``bananastand.wakeups``) tell it of new work at once, so this is only the fallback.
    poll_interval_seconds: float = Field(default=10.0, gt=0)
    shutdown_grace_seconds: float = 30.0
    task_timeout_seconds: float = 900.0
    #: Each worker process's row in the registry is written this often; one silent for
    #: three intervals is not live (``bananastand workers``, the periodic-jobs lease).
    worker_heartbeat_seconds: float = Field(default=15.0, gt=0)
    # A task made in another process is claimed by one live worker in turn; the others
    # look this long after whether it still waits (that worker may be full, or gone).
    worker_turn_look_seconds: float = Field(default=0.5, gt=0)

    # Providers.
    live_provider: LiveProvider = LiveProvider.AUTO
    sandbox_delay_ms: int = 0
    # Added to the sandbox's delay for batch-lane tasks of test keys.
    sandbox_batch_delay_ms: int = Field(default=2000, ge=0)

    # The batch lane (``"lane": "batch"``): Gemini API tasks grouped per model into jobs
    # of the Batch API, sent when a group has this many tasks or its oldest waited this
    # long; one process of the cluster sends and polls them.
    batch_max_requests: int = Field(default=500, ge=1)
    batch_max_wait_seconds: float = Field(default=300.0, ge=0)
    batch_poll_seconds: float = Field(default=30.0, gt=0)
    # Requests inline while the job's body stays under this; beyond, a JSONL file.
    batch_inline_limit_bytes: int = Field(default=20_000_000, ge=1)
    # How long a batch-lane task may wait for its job (the task timeout does not apply).
    batch_timeout_seconds: float = Field(default=26 * 3600.0, gt=0)
    # A job that fails or expires: its tasks run once more on the now lane (off: they fail).
    batch_requeue_failed: bool = True

    # Google, read from the variables the google-genai SDK itself reads (no prefix).
    google_api_key: str = Field(
        default="", validation_alias=AliasChoices("GOOGLE_API_KEY", "GEMINI_API_KEY")
    )
    google_gemini_base_url: str = Field(default="", validation_alias="GOOGLE_GEMINI_BASE_URL")
    google_use_vertexai: bool = Field(default=False, validation_alias="GOOGLE_GENAI_USE_VERTEXAI")
    google_cloud_project: str = Field(default="", validation_alias="GOOGLE_CLOUD_PROJECT")
    google_cloud_location: str = Field(default="global", validation_alias="GOOGLE_CLOUD_LOCATION")
    # How bananastand talks to its upstreams (the defaults of each [upstreams.NAME] table).
    upstream_timeout_seconds: float = up.DEFAULT_TIMEOUT_SECONDS  # one call; 4K takes minutes
    upstream_retry_budget_seconds: float = up.DEFAULT_RETRY_BUDGET_SECONDS  # between retries
    upstream_max_attempts: int = up.DEFAULT_MAX_ATTEMPTS
    upstream_backoff_seconds: float = up.DEFAULT_BACKOFF_SECONDS  # doubled each time, jittered
    # Per upstream, for the whole cluster: shared in Redis, else split among live workers.
    upstream_concurrency: int = up.DEFAULT_CONCURRENCY  # calls in flight; more tasks queue
    upstream_requests_per_minute: float = up.DEFAULT_REQUESTS_PER_MINUTE  # per key; 0: no cap
    # How stale a process's view of the cluster's circuit breakers may be.
    upstream_breaker_refresh_seconds: float = Field(default=2.0, gt=0)

    # Outbound fetches (image_input): networks or host names allowed although private.
    allow_private_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_input_image_bytes: int = 30 * 1024 * 1024
    max_input_image_pixels: int = 64_000_000  # decompression-bomb guard
    fetch_timeout_seconds: float = 60.0
    fetch_concurrency: int = 4  # image_input fetches in parallel per task

    # Files: uploads, result links, retention, and where files are kept.
    storage_backend: Literal["local", "s3"] = "local"
    s3_endpoint_url: str = ""  # empty: AWS; else e.g. http://minio:9000
    s3_bucket: str = ""
    s3_region: str = ""
    s3_access_key_id: str = ""  # empty: boto3's usual credential chain
    s3_secret_access_key: str = ""
    s3_prefix: str = ""  # keys go under this folder of the bucket
    s3_presigned_redirect: bool = False  # opt-in; breaks clients that send their key along
    signing_secret: str = ""  # empty: made once, kept in DATA_DIR/signing-secret
    result_link_seconds: int = 24 * 3600
    result_retention_seconds: int = 7 * 24 * 3600
    upload_retention_seconds: int = 3 * 24 * 3600
    download_link_seconds: int = 20 * 60
    max_upload_bytes: int = 30 * 1024 * 1024
    max_base64_upload_bytes: int = 10 * 1024 * 1024
    sweep_interval_seconds: float = 3600.0  # 0: workers never sweep (run `files sweep`)

    # Credits, limits and operations.
    billing: bool = True  # off: no credits at all (one team on its own server)
    starting_credits: int = 0  # granted to each new account
    admin_token: SecretStr = SecretStr("")  # empty: the /admin/ API is disabled
    metrics_token: SecretStr = SecretStr("")  # empty: /metrics answers anyone who can reach it
    create_rate: str = "20/second"  # per key, for createTask; "unlimited" allowed
    read_rate: str = "20/second"  # per key, for every other API call
    max_waiting_tasks: int = 1000  # per account; 0: no cap
    redis_url: str = ""  # empty: rate limits and upstream budgets kept in each process
    # PostgreSQL: LISTEN/NOTIFY wakes the other processes at once; off behind PgBouncer
    # in transaction mode (which drops LISTEN), where processes poll.
    pg_notify: bool = True
    switch_poll_seconds: float = 1.0  # how stale maintenance/model switches may be

    # Event streams (recordInfo with ``Accept: text/event-stream``).
    # How often the tasks that open streams follow are reread while any stream is open,
    # without a wake-up: the fallback for a change made by another process that no
    # wake-up announced (a lost message, BANANASTAND_PG_NOTIFY=off).
    events_poll_ms: int = Field(default=5000, gt=0)
    events_heartbeat_seconds: float = Field(default=15.0, gt=0)  # a comment line when quiet
    events_max_stream_seconds: float = Field(default=600.0, gt=0)  # then the client reconnects

    # Callbacks (webhooks): delivery, retries, fairness, secret rotation.
    webhook_timeout_seconds: float = 15.0
    # Delay before each attempt (the first is usually 0: at once); Standard Webhooks'.
    webhook_retry_schedule_seconds: Annotated[list[float], NoDecode] = Field(
        default_factory=_default_webhook_schedule
    )
    webhook_concurrency: int = Field(default=64, ge=1, le=100)  # the sender's pool holds 100
    webhook_per_host_concurrency: int = Field(default=4, ge=1)
    webhook_secret_rotation_seconds: float = 24 * 3600.0
    # Hosts never called back (some clients put a third party's callBackUrl into every
    # task): such callbacks end as ``refused`` without any connection.
    callback_deny_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Structured tables; override in the BANANASTAND_CONFIG TOML file.
    models: dict[str, ModelSpec] = Field(default_factory=_default_models)
    prices: dict[str, dict[Resolution, int]] = Field(default_factory=_default_prices)
    # The batch lane's prices, per model and resolution; what is not here is half the
    # price above, rounded up.
    batch_prices: dict[str, dict[Resolution, int]] = Field(default_factory=dict)
    # The upstreams live keys may run on, and per model the order they are tried in
    # (``bananastand.upstreams``); without [upstreams], the Google settings above.
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    routes: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("cors_origins", "allow_private_networks", "callback_deny_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("callback_deny_hosts")
    @classmethod
    def _valid_hosts(cls, value: list[str]) -> list[str]:
        HostList.parse(value)
        return value

    @field_validator("create_rate", "read_rate")
    @classmethod
    def _valid_rate(cls, value: str) -> str:
        parse_rate(value)
        return value

    @field_validator("webhook_retry_schedule_seconds", mode="before")
    @classmethod
    def _split_schedule(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("webhook_retry_schedule_seconds")
    @classmethod
    def _sane_schedule(cls, value: list[float]) -> list[float]:
        if not value or value[0] != 0 or any(delay < 0 for delay in value):
            raise ValueError(
                "must list delays in seconds, none negative, starting with 0 (the first "
                "attempt is made as the task ends)"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value:
            return value
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            backend = make_url(value).get_backend_name()
        except ArgumentError:
            raise ValueError("not a database URL (sqlite:///PATH or postgresql://...)") from None
        if backend not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(f"{backend} is not supported: use sqlite:///PATH or postgresql://...")
        return value

    @field_validator("upstreams")
    @classmethod
    def _named_upstreams(cls, value: dict[str, UpstreamConfig]) -> dict[str, UpstreamConfig]:
        up.check_upstreams(value)
        return value

    @field_validator("routes")
    @classmethod
    def _known_upstreams(cls, value: dict[str, list[str]], info: ValidationInfo) -> Any:
        # A field that failed its own validation is missing here: its error is reported.
        up.check_routes(value, info.data.get("upstreams", {}), info.data.get("models", {}))
        return value

    @model_validator(mode="after")
    def _inherit_upstream_settings(self) -> Settings:
        """An upstream's table inherits what it leaves out of ``BANANASTAND_UPSTREAM_*``."""
        defaults = self.upstream_defaults()
        self.upstreams = {
            name: config.inheriting(defaults) for name, config in self.upstreams.items()
        }
        return self

    def upstream_defaults(self) -> dict[str, object]:
        return {name: getattr(self, f"upstream_{name}") for name in up.INHERITED}

    @field_validator("sqlite_synchronous")
    @classmethod
    def _known_synchronous(cls, value: str) -> str:
        value = value.upper()
        if value not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError("must be OFF, NORMAL, FULL or EXTRA")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("BANANASTAND_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    def allowing_loopback(self) -> Settings:
        """``serve --allow-loopback``: these settings with outbound fetches (callbacks,
        ``image_input``) allowed to reach this machine, so that a local receiver works.

        Only for a server that listens on loopback and whose operator has not set
        ``allow_private_networks`` (even to empty); otherwise ``self``, unchanged. Not
        ``serve``'s default: a server behind a reverse proxy listens on loopback too, and
        its users must not reach the machine it runs on.
        """
        if not is_loopback_host(self.host) or "allow_private_networks" in self.model_fields_set:
            return self
        return self.model_copy(update={"allow_private_networks": list(LOOPBACK_NETWORKS)})

    @property
    def effective_public_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'bananastand.db'}"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

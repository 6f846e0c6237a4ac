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

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bananastand.contract import Resolution


class LiveProvider(StrEnum):
    """Which provider runs the tasks of live keys (test keys always use the sandbox)."""

    AUTO = "auto"  # Google when its credentials are present, else none (createTask: 505)
    SANDBOX = "sandbox"  # live keys run on the sandbox too: demos, tests of charged tasks
    GEMINI = "gemini"
    VERTEX = "vertex"


class ModelSpec(BaseModel):
    """One model name clients send, and what it means upstream."""

    upstream_id: str
    #: Whether clients may pick the resolution (Nano Banana has a fixed ~1K output).
    resolutions: list[Resolution] = Field(default_factory=lambda: list(Resolution))
    max_images: int = 8


def _default_models() -> dict[str, ModelSpec]:
    return {"nano-banana-pro": ModelSpec(upstream_id="gemini-3-pro-image")}


def _default_prices() -> dict[str, dict[Resolution, int]]:
    return {
        "nano-banana-pro": {Resolution.R1K: 18, Resolution.R2K: 18, Resolution.R4K: 24},
    }


def _default_webhook_schedule() -> list[float]:
    """Standard Webhooks': now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h."""
    return [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0]


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

    # Requests.
    max_body_bytes: int = 256 * 1024
    idempotency_ttl_seconds: int = 24 * 3600
    key_cache_seconds: float = 5.0

    # Workers.
    worker_concurrency: int = 16
    lease_seconds: float = 60.0
    max_attempts: int = 3
    poll_interval_seconds: float = 1.0
    shutdown_grace_seconds: float = 30.0
    task_timeout_seconds: float = 900.0

    # Providers.
    live_provider: LiveProvider = LiveProvider.AUTO
    sandbox_delay_ms: int = 0

    # Outbound fetches (image_input): networks or host names allowed although private.
    fetch_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_input_image_bytes: int = 30 * 1024 * 1024
    fetch_timeout_seconds: float = 60.0

    # Callbacks (webhooks): delivery, retries, fairness, secret rotation.
    webhook_timeout_seconds: float = 15.0
    # Delay before each attempt (the first is usually 0: at once); Standard Webhooks'.
    webhook_retry_schedule_seconds: Annotated[list[float], NoDecode] = Field(
        default_factory=_default_webhook_schedule
    )
    webhook_concurrency: int = Field(default=64, ge=1, le=100)  # the sender's pool holds 100
    webhook_per_host_concurrency: int = Field(default=4, ge=1)
    webhook_secret_rotation_seconds: float = 24 * 3600.0

    # Structured tables; override in the BANANASTAND_CONFIG TOML file.
    models: dict[str, ModelSpec] = Field(default_factory=_default_models)
    prices: dict[str, dict[Resolution, int]] = Field(default_factory=_default_prices)

    @field_validator("cors_origins", "fetch_allow", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
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

    @property
    def effective_public_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'bananastand.db'}"

    @property
    def private_allow(self) -> tuple[str, ...]:
        """Networks and host names outbound requests may reach although private; every
        user of the allow-list reads it here."""
        return tuple(self.fetch_allow)

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

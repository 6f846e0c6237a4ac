"""Unit: settings from defaults, the environment and the TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from bananastand.contract import Resolution
from bananastand.settings import LiveProvider, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("BANANASTAND_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.effective_public_url == "http://127.0.0.1:8000"
    assert settings.effective_database_url == f"sqlite:///{Path('var') / 'bananastand.db'}"
    assert settings.live_provider is LiveProvider.AUTO
    assert settings.models["nano-banana-pro"].upstream_id == "gemini-3-pro-image"
    assert settings.prices["nano-banana-pro"] == {
        Resolution.R1K: 18,
        Resolution.R2K: 18,
        Resolution.R4K: 24,
    }


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANANASTAND_PORT", "9001")
    monkeypatch.setenv("BANANASTAND_PUBLIC_URL", "https://img.example.com/")
    monkeypatch.setenv("BANANASTAND_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("BANANASTAND_ALLOW_PRIVATE_NETWORKS", "10.0.0.0/8,files.internal")
    monkeypatch.setenv("BANANASTAND_LIVE_PROVIDER", "sandbox")
    monkeypatch.setenv("BANANASTAND_LEASE_SECONDS", "2.5")
    settings = Settings()
    assert settings.port == 9001
    assert settings.effective_public_url == "https://img.example.com"
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.allow_private_networks == ["10.0.0.0/8", "files.internal"]
    assert settings.live_provider is LiveProvider.SANDBOX
    assert settings.lease_seconds == 2.5


def test_config_file_overrides_tables_and_env_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "bananastand.toml"
    config.write_text(
        """
worker_concurrency = 4
port = 7000

[models.nano-banana-pro]
upstream_id = "gemini-3-pro-image-preview"

[models.nano-banana-2]
upstream_id = "gemini-3.1-flash-image-preview"
resolutions = ["1K", "2K"]

[prices.nano-banana-pro]
1K = 10
2K = 12
4K = 20
"""
    )
    monkeypatch.setenv("BANANASTAND_CONFIG", str(config))
    monkeypatch.setenv("BANANASTAND_PORT", "7001")
    settings = Settings()
    assert settings.worker_concurrency == 4
    assert settings.port == 7001  # the environment wins over the file
    assert settings.models["nano-banana-pro"].upstream_id == "gemini-3-pro-image-preview"
    assert settings.models["nano-banana-2"].resolutions == [Resolution.R1K, Resolution.R2K]
    assert settings.prices["nano-banana-pro"][Resolution.R4K] == 20


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("BANANASTAND_SQLITE_SYNCHRONOUS", "sometimes")
    with pytest.raises(ValidationError, match="sqlite_synchronous"):
        Settings()

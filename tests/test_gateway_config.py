"""Acceptance: the config file's [upstreams] and [routes] as ``bananastand serve`` reads them: a
config that cannot work stops it at start with one line naming what is wrong; one that can is
printed as the routes it will use."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bananastand.fake_gemini import FakeGemini
from bananastand.settings import Settings
from conftest import ServerProcess, cli
from test_cli_errors import NOT_STARTED, one_line

GOOD = """
[upstreams.google]
kind = "gemini"
api_keys = ["env:TEST_GEMINI_KEY", "env:TEST_GEMINI_KEY_2"]
base_url = "{base_url}"

[upstreams.backup]
kind = "vertex"
project = "my-project"
location = "europe-west4"

[routes]
"nano-banana-pro" = ["google", "backup"]
"""


def config_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bananastand.toml"
    path.write_text(text)
    return str(path)


def as_toml(upstreams: dict[str, dict[str, Any]], routes: dict[str, list[str]]) -> str:
    """The config file's text for these tables (their values: strings, numbers, lists of
    strings, each written as JSON writes it, which TOML reads the same)."""
    lines: list[str] = []
    for name, table in upstreams.items():
        lines += [f"[upstreams.{name}]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    lines += [
        "[routes]",
        *(f"{json.dumps(model)} = {json.dumps(r)}" for model, r in routes.items()),
    ]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (
            ('"google", "backup"', '"google", "kei"'),
            "[routes]: route 'nano-banana-pro': unknown upstream 'kei'",
        ),
        (
            ('"env:TEST_GEMINI_KEY_2"', '"env:TEST_GEMINI_KEY_MISSING"'),
            "[upstreams.google.api_keys]: the environment variable TEST_GEMINI_KEY_MISSING "
            "is not set",
        ),
        (('location = "europe-west4"', 'colour = "blue"'), "[upstreams.backup.colour]: unknown"),
        (('kind = "vertex"', 'kind = "carrier-pigeon"'), "[upstreams.backup.kind]: Input should"),
        (('project = "my-project"', ""), "[upstreams.backup]: kind vertex needs project"),
        (
            ("[upstreams.backup]", "[upstreams.sandbox]"),
            "[upstreams]: 'sandbox' is the test keys' provider",
        ),
    ],
)
def test_a_config_that_cannot_work_stops_serve_with_one_line(
    tmp_path: Path, change: tuple[str, str], said: str
) -> None:
    text = GOOD.format(base_url="http://127.0.0.1:9").replace(*change)
    done = cli(
        tmp_path / "data",
        "serve",
        BANANASTAND_CONFIG=config_file(tmp_path, text),
        TEST_GEMINI_KEY="k1",
        TEST_GEMINI_KEY_2="k2",
    )
    line = one_line(done, NOT_STARTED)
    assert f"error: BANANASTAND_CONFIG {said}" in line, line


def test_serve_prints_the_routes_it_will_use(
    spawn: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    with FakeGemini() as fake:
        text = GOOD.format(base_url=fake.base_url).replace('"google", "backup"', '"google"')
        child = spawn(
            "serve",
            env={
                "BANANASTAND_CONFIG": config_file(tmp_path, text),
                "TEST_GEMINI_KEY": "first-secret-of-the-pool",
                "TEST_GEMINI_KEY_2": "second-secret-of-the-pool",
            },
        )
        log = child.log()
    assert "live keys are routed (BANANASTAND_CONFIG [routes], tried in order):" in log
    assert "  nano-banana-pro -> google (gemini)\n" in log
    assert "  nano-banana-2: no route (createTask answers 505)" in log
    assert "secret-of-the-pool" not in log  # secrets are never printed


def test_an_upstream_inherits_the_upstream_settings_it_leaves_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BANANASTAND_UPSTREAM_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("BANANASTAND_UPSTREAM_CONCURRENCY", "3")
    monkeypatch.setenv("TEST_GEMINI_KEY", "k1")
    monkeypatch.setenv("TEST_GEMINI_KEY_2", "k2")
    text = GOOD.format(base_url="").replace('location = "europe-west4"', "max_attempts = 7")
    monkeypatch.setenv("BANANASTAND_CONFIG", config_file(tmp_path, text))
    settings = Settings()
    google, backup = settings.upstreams["google"], settings.upstreams["backup"]
    assert (google.max_attempts, google.concurrency) == (2, 3)
    assert (backup.max_attempts, backup.concurrency) == (7, 3)  # its own wins
    assert google.keys == ("k1", "k2")  # resolved from the environment
    assert settings.routes == {"nano-banana-pro": ["google", "backup"]}

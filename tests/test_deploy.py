"""Unit: the deployment files say only what the product knows.

``compose.yaml`` and the ``Dockerfile`` are not run here (CI has no container runtime), so
what can drift is checked against the code and the README: every bananastand command they
start parses with the real command line (a renamed option fails here, not on a user's
host), every ``BANANASTAND_*`` variable they set is a documented setting whose value the
settings object accepts, and every other variable is one the README names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from bananastand.cli import app
from bananastand.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
#: The settings table's first column: | `BANANASTAND_X` | default | meaning |
DOCUMENTED = set(re.findall(r"^\| `(BANANASTAND_[A-Z0-9_]+)` \|", README, re.MULTILINE))
#: ``${NAME:-default}`` as compose fills it in when NAME is unset.
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def our_services() -> Iterator[tuple[str, dict[str, Any]]]:
    """The services that run this repository's image (the others are PostgreSQL & co.)."""
    for name, service in compose()["services"].items():
        if service.get("image") == "bananastand:local" or "build" in service:
            yield name, service


def with_defaults(value: str) -> str:
    return _INTERPOLATION.sub(lambda match: match.group(2) or "", value)


def parse_command(argv: list[str]) -> str:
    """The name of the subcommand ``argv`` runs, once the real CLI has parsed and converted
    every option of it; raises ``typer.TyperException`` (a usage error) for an option that
    does not exist or a value it refuses."""
    assert argv[0] == "bananastand", argv
    group = typer.main.get_command(app)
    parent = group.make_context("bananastand", argv[1:2])
    command = group.get_command(parent, argv[1])  # type: ignore[attr-defined]
    assert command is not None, f"no command {argv[1]!r}"
    command.make_context(argv[1], argv[2:], parent=parent)
    return argv[1]


def dockerfile_lines() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_the_compose_file_starts_the_documented_topology() -> None:
    services = dict(our_services())
    commands = {name: service["command"][:2] for name, service in services.items()}
    assert commands == {
        "migrate": ["bananastand", "migrate"],
        "api": ["bananastand", "serve"],
        "worker": ["bananastand", "worker"],
    }
    assert {"postgres", "redis", "minio"} <= compose()["services"].keys()
    # Schema changes happen once, in the migrate service; the roles refuse to make them.
    assert "--no-migrate" in services["api"]["command"]
    assert "--no-migrate" in services["worker"]["command"]
    assert "--no-worker" in services["api"]["command"]


@pytest.mark.parametrize("name", [name for name, _ in our_services()])
def test_each_service_command_parses_with_the_real_cli(name: str) -> None:
    command = parse_command(dict(our_services())[name]["command"])
    assert command in {"serve", "worker", "migrate"}
    assert f"bananastand {command}" in README


def test_an_unknown_option_is_refused_by_that_parse() -> None:
    with pytest.raises(typer.TyperException, match="no-such-option"):
        parse_command(["bananastand", "worker", "--no-such-option"])
    with pytest.raises(typer.TyperException, match="valid integer"):
        parse_command(["bananastand", "serve", "--port", "eighty"])


def test_every_setting_the_deployment_files_set_is_documented_and_valid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    environment: dict[str, str] = {}
    for _, service in our_services():
        environment.update({key: str(value) for key, value in service["environment"].items()})
    for line in dockerfile_lines():
        if line.startswith("ENV "):
            environment.update(re.findall(r"(BANANASTAND_[A-Z0-9_]+)=(\S+)", line))
    ours = {key for key in environment if key.startswith("BANANASTAND_")}
    assert ours, "the deployment sets no bananastand settings"
    assert sorted(ours - DOCUMENTED) == []
    others = sorted(key for key in environment.keys() - ours if key not in README)
    assert others == []
    for key, value in environment.items():
        monkeypatch.setenv(key, with_defaults(value))
    settings = Settings()
    assert settings.storage_backend == "s3"
    assert settings.database_url.startswith("postgresql://")


def test_the_image_runs_the_documented_default_command() -> None:
    (cmd,) = [line for line in dockerfile_lines() if line.startswith("CMD ")]
    argv = json.loads(cmd.removeprefix("CMD "))
    assert parse_command(argv) == "serve"

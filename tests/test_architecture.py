"""Unit: the dependency rules of the layout, read from the source (imports and names).

The domain talks to storage only through ``store.ports``; the portable queries hold no
dialect branches; the store speaks in values, never in the API's envelope errors. A
second database adapter relies on all three.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "bananastand"
DOMAIN = (
    "accounts",
    "billing",
    "events",
    "files",
    "membership",
    "ops",
    "records",
    "results",
    "tasks",
    "webhooks",
    "worker",
)
#: What the domain may not import: drivers and SQLAlchemy (and any part of the store but
#: its ports, see ``is_storage_detail``).
DRIVERS = ("sqlalchemy", "sqlite3", "psycopg")


def imported(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            # ``from bananastand.store import sql`` names the module in the alias.
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def is_storage_detail(name: str) -> bool:
    if any(within(name, driver) for driver in DRIVERS):
        return True
    return within(name, "bananastand.store") and not within(name, "bananastand.store.ports")


def sources(name: str) -> list[Path]:
    """The files of a module, or of every module of a package."""
    module = PACKAGE / f"{name}.py"
    found = [module] if module.exists() else sorted((PACKAGE / name).rglob("*.py"))
    assert found, f"no module or package {name}"
    return found


@pytest.mark.parametrize("module", DOMAIN)
def test_the_domain_reaches_storage_only_through_its_ports(module: str) -> None:
    found = [name for path in sources(module) for name in imported(path) if is_storage_detail(name)]
    assert found == []


def store_modules() -> list[Path]:
    store = PACKAGE / "store"
    return sorted(p for p in store.rglob("*.py") if "migrations" not in p.parts)


def names_a_dialect(node: ast.AST) -> bool:
    """``<anything>.dialect.name``: what a branch on the database compares."""
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "name"
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "dialect"
    )


def test_the_portable_queries_have_no_dialect_branches() -> None:
    queries = sorted((PACKAGE / "store" / "sql").glob("*.py"))
    assert len(queries) >= 5
    branching = [
        f"{path.name}:{node.lineno}"
        for path in queries
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Compare)
        and any(names_a_dialect(part) for part in [node.left, *node.comparators])
    ]
    assert branching == []


def test_the_store_returns_refusals_and_never_raises_the_apis_errors() -> None:
    raising = [
        path.name
        for path in store_modules()
        if any(within(name, "bananastand.errors") for name in imported(path))
    ]
    assert raising == []

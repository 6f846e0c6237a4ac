"""Integration: ``migrate.upgrade`` brings a database to head, and costs next to nothing when it
is (on this run's database: a SQLite file, or a PostgreSQL database)."""

from __future__ import annotations

import subprocess
import sys

from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from bananastand.store import migrate, open_runner


def test_the_heads_read_from_the_scripts_are_alembics() -> None:
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert migrate.head_revisions() == frozenset(scripts.get_heads())


def test_a_new_database_is_brought_to_head(empty_database: str) -> None:
    db = open_runner(empty_database)
    try:
        assert migrate.current_revisions(db) == frozenset()
        migrate.upgrade(db)
        assert migrate.current_revisions(db) == migrate.head_revisions()
        assert "tasks" in inspect(db.engine).get_table_names()
        migrate.upgrade(db)  # again: nothing to do
        assert migrate.current_revisions(db) == migrate.head_revisions()
    finally:
        db.engine.dispose()


def test_a_database_at_head_does_not_load_alembic(empty_database: str) -> None:
    db = open_runner(empty_database)
    migrate.upgrade(db)
    db.engine.dispose()
    script = (
        "import sys\n"
        "from bananastand.store import migrate, open_runner\n"
        f"migrate.upgrade(open_runner({empty_database!r}))\n"
        "print(sorted(name for name in sys.modules if name.startswith('alembic')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"

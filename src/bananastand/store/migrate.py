"""Brings a database to the newest schema with Alembic; every entry point calls it.

Alembic (its environment, every migration script) loads only when the database is
behind. Whether it is costs two small queries and a look at the scripts' revision lines,
read as text, not imported: running ``command.upgrade`` on a database already at head
cost ~0.2 s of CPU (importing Alembic), paid by every server start and admin command.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text

from bananastand.store.runner import GroupCommitRunner as Database

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
#: ``revision = "0006"`` / ``down_revision: str | None = "0004"`` lines of a script.
_REVISION_LINE = re.compile(r"^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(.+?)\s*$", re.M)


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@cache
def _revision_graph() -> tuple[frozenset[str], frozenset[str]]:
    """(every revision of the scripts, every revision a script builds on)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (MIGRATIONS / "versions").glob("*.py"):
        for name, value in _REVISION_LINE.findall(script.read_text()):
            parsed = ast.literal_eval(value)
            found = parsed if isinstance(parsed, tuple | list) else (parsed,)
            (revisions if name == "revision" else parents).update(v for v in found if v)
    return frozenset(revisions), frozenset(parents)


def head_revisions() -> frozenset[str]:
    """The revisions no other script builds on (one, unless branches were made)."""
    revisions, parents = _revision_graph()
    return revisions - parents


def current_revisions(db: Database) -> frozenset[str]:
    """What ``alembic_version`` says the database is at; empty for a new database."""
    with db.engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return frozenset()
        rows = connection.execute(text("SELECT version_num FROM alembic_version"))
        return frozenset(str(row) for row in rows.scalars())


class SchemaMismatch(Exception):
    """The database's schema is not the one this code was written for."""


def check(db: Database) -> None:
    """``SchemaMismatch`` unless the database is at the code's newest revision (for
    processes told not to migrate: they must not run on a schema they do not know)."""
    current = current_revisions(db)
    if current == head_revisions():
        return
    at = ", ".join(sorted(current))
    if not current:
        state = "has no bananastand tables yet"
    elif current - _revision_graph()[0]:
        state = f"is at revision {at}, newer than this version of bananastand"
    else:
        state = f"is at revision {at}, older than this version's {', '.join(head_revisions())}"
    raise SchemaMismatch(f"the database {state}: run `bananastand migrate`")


def upgrade(db: Database) -> None:
    """Idempotent; safe when several processes start at once: the adapter's exclusive
    connection holds its lock (SQLite's write lock, PostgreSQL's advisory lock), and
    Alembic, once it holds it, finds the work done."""
    if current_revisions(db) == head_revisions():
        return
    from alembic import command

    config = alembic_config()
    with db.exclusive_connection() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()

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

from bananastand.store.sqlite.database import Database

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
def head_revisions() -> frozenset[str]:
    """The revisions no other script builds on (one, unless branches were made)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (MIGRATIONS / "versions").glob("*.py"):
        for name, value in _REVISION_LINE.findall(script.read_text()):
            parsed = ast.literal_eval(value)
            found = parsed if isinstance(parsed, tuple | list) else (parsed,)
            (revisions if name == "revision" else parents).update(v for v in found if v)
    return frozenset(revisions - parents)


def current_revisions(db: Database) -> frozenset[str]:
    """What ``alembic_version`` says the database is at; empty for a new database."""
    with db.engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return frozenset()
        rows = connection.execute(text("SELECT version_num FROM alembic_version"))
        return frozenset(str(row) for row in rows.scalars())


def upgrade(db: Database) -> None:
    """Idempotent; safe when several processes start at once (the write lock serialises,
    and Alembic, once it holds it, finds the work done)."""
    if current_revisions(db) == head_revisions():
        return
    from alembic import command

    config = alembic_config()
    with db.exclusive_connection() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()

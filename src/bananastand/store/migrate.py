"""Brings a database to the newest schema with Alembic; every entry point calls it."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from bananastand.store.database import Database

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(db: Database) -> None:
    """Idempotent; safe when several processes start at once (the write lock serialises)."""
    config = alembic_config()
    with db.exclusive_connection() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()

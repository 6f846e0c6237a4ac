"""What an admin command of ``bananastand`` opens: the database and the domain objects
it uses, nothing else.

``serve`` and ``worker`` open the whole runtime (``app.open_runtime``: FastAPI, the
providers and google-genai, storage, the fetcher). An admin command (``keys``,
``accounts``, ``credits add/audit``, ``maintenance``, ``models``, ``webhooks secret``)
runs a query or two; importing and building all that cost it ~1.7 s of CPU, and the test
suite runs these commands by the hundred. Here the store is opened, its schema brought
to head (``migrate.upgrade``: a cheap check unless it is behind, so a fresh data folder
still works), and each domain object built on first use.

A refusal or a database that cannot be used is one line on stderr and an exit status
(the table in ``bananastand.client.exits``): 2 for a bad argument (an unknown account or
key, a refused value) or bad settings, 4 for the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import cached_property, partial
from typing import TypeVar

from pydantic_core import ErrorDetails
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from bananastand.accounts import Accounts
from bananastand.billing import Billing
from bananastand.client.exits import NOT_STARTED, SERVER, USAGE, fail
from bananastand.errors import ApiError, ConfigurationError
from bananastand.ops import Switches
from bananastand.settings import Settings
from bananastand.store import is_postgres, open_settings_store
from bananastand.store.migrate import SchemaMismatch
from bananastand.store.ports import Store
from bananastand.wakeups import Topic, Wakeups
from bananastand.wakeups.buses import bus_for
from bananastand.webhooks.account import Webhooks

T = TypeVar("T")


class AdminServices:
    """The domain objects of the admin commands, on one database, each made on first use."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        #: Tells the running servers what changed (their caches drop it); made on first
        #: use, sent as the command ends.
        self.wakeups: Wakeups | None = None

    def _changed(self, topic: Topic) -> None:
        if self.wakeups is None:
            self.wakeups = Wakeups(bus_for(self.settings))
        self.wakeups.publish(topic)

    @cached_property
    def accounts(self) -> Accounts:
        return Accounts(
            self.store,
            key_cache_seconds=self.settings.key_cache_seconds,
            starting_credits=self.settings.starting_credits,
            on_change=partial(self._changed, Topic.CONFIG),
        )

    @cached_property
    def billing(self) -> Billing:
        return Billing(self.store, self.settings)

    @cached_property
    def switches(self) -> Switches:
        return Switches(
            self.store,
            poll_seconds=self.settings.switch_poll_seconds,
            on_change=partial(self._changed, Topic.CONFIG),
        )

    @cached_property
    def webhooks(self) -> Webhooks:
        return Webhooks(
            self.store, self.settings, on_resend=partial(self._changed, Topic.CALLBACKS)
        )


def load_settings(*, starting: bool = False, **overrides: object) -> Settings:
    """Settings from the environment (and ``overrides`` that are not ``None``), logging
    configured; a setting that does not parse is one line and exit status 2 (1 when
    ``starting``, as in ``run_admin``)."""
    import pydantic

    from bananastand import logs

    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        settings = Settings(**given)  # type: ignore[arg-type]
    except pydantic.ValidationError as exc:
        fail(_setting_error(exc.errors()[0]), NOT_STARTED if starting else USAGE)
    logs.configure(settings.log_level, settings.log_format)
    return settings


#: Settings only the config file's tables hold: named by their place in the file.
_CONFIG_TABLES = frozenset({"upstreams", "routes", "models", "prices"})


def _setting_error(error: ErrorDetails) -> str:
    """One line naming the setting (or the config file's entry) and what is wrong."""
    loc = [str(part) for part in error["loc"]]
    said = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        said = "unknown field"
    if loc and loc[0] in _CONFIG_TABLES:
        return f"BANANASTAND_CONFIG [{'.'.join(loc)}]: {said}: fix the config file"
    return f"BANANASTAND_{'_'.join(loc).upper()}: {said}: fix the setting"


def run_admin(
    settings: Settings,
    action: Callable[[AdminServices], Awaitable[T]],
    *,
    migrate: bool | None = None,
    starting: bool = False,
) -> T:
    """Run one admin action on the database; errors end the command with one line.

    ``starting``: this is the start of ``serve``, ``worker`` or ``migrate``, which exit
    with status 1 whatever stops them (as service managers expect of a process that
    could not start); admin commands use the table of ``bananastand.client.exits``.

    ``migrate`` (None: the default of admin commands) brings the schema to the newest
    version first. By default only the embedded SQLite file is migrated, so that a new
    data folder works with any first command; a database server's schema is changed
    only by ``bananastand migrate`` and by ``serve``/``worker`` (unless told not to).
    """
    if migrate is None:
        migrate = not is_postgres(settings.effective_database_url)

    async def run() -> T:
        if not settings.database_url:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = await open_settings_store(settings, migrate=migrate)
        services = AdminServices(settings, store)
        try:
            return await action(services)
        finally:
            if services.wakeups is not None:
                await services.wakeups.aclose()
            await store.close()

    usage, server = (NOT_STARTED, NOT_STARTED) if starting else (USAGE, SERVER)
    try:
        return asyncio.run(run())
    except ApiError as exc:
        fail(exc.msg, usage)
    except ConfigurationError as exc:
        fail(f"{exc}: fix the setting", usage)
    except SchemaMismatch as exc:
        fail(str(exc), server)
    except SQLAlchemyError as exc:
        fail(database_trouble(settings, exc), server)
    except ImportError as exc:  # a database URL whose driver is not installed
        fail(f"database: {exc}: install the database's driver", usage)
    except OSError as exc:
        fail(
            f"data folder {settings.data_dir}: {exc.strerror or exc}: set BANANASTAND_DATA_DIR",
            usage,
        )


def database_trouble(settings: Settings, exc: SQLAlchemyError) -> str:
    """The line for a database that cannot be used: which one (never its password), what
    the driver said, what to do."""
    url = make_url(settings.effective_database_url).render_as_string(hide_password=True)
    # psycopg's messages run over lines ("...refused\n\tIs the server running..."): one.
    said = " ".join(str(getattr(exc, "orig", None) or exc).split())
    if "locked" in said:
        hint = "another process is writing to it: try again in a moment"
    elif "not a database" in said or "malformed" in said:
        hint = "it is not a bananastand database (or is damaged): check BANANASTAND_DATA_DIR"
    else:
        hint = "check BANANASTAND_DATA_DIR / BANANASTAND_DATABASE_URL, and that it is up"
    return f"database {url}: {said}: {hint}"

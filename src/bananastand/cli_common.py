"""What the server-side commands of ``bananastand`` share: settings from the environment,
one admin action on the database, and the console they print on.

Kept apart from the commands so that the role commands (``cli_roles``) and the admin
commands (``cli``) use them without importing each other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from rich.console import Console

if TYPE_CHECKING:
    from bananastand.accounts import Accounts
    from bananastand.admin_runtime import AdminServices
    from bananastand.settings import Settings

T = TypeVar("T")

console = Console(highlight=False, soft_wrap=True)


def env_settings(*, starting: bool = False, **overrides: object) -> Settings:
    """The settings of this process (``overrides`` that are not None win); a setting that
    does not parse ends the command with one line (``admin_runtime.load_settings``)."""
    from bananastand.admin_runtime import load_settings  # the server side, on demand

    return load_settings(starting=starting, **overrides)


def with_accounts(
    settings: Settings,
    action: Callable[[Accounts], Awaitable[T]],
    *,
    migrate: bool | None = None,
    starting: bool = False,
) -> T:
    return with_services(
        settings, lambda services: action(services.accounts), migrate=migrate, starting=starting
    )


def with_services(
    settings: Settings,
    action: Callable[[AdminServices], Awaitable[T]],
    *,
    migrate: bool | None = None,
    starting: bool = False,
) -> T:
    """Run one admin action on the database alone; errors are one line (``run_admin``)."""
    from bananastand.admin_runtime import run_admin

    return run_admin(settings, action, migrate=migrate, starting=starting)

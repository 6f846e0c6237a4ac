"""How the ``bananastand`` command ends: its exit statuses and its one-line errors.

Every error is one line on stderr (``error: what happened: what to do``), never a
traceback, and the exit status says what kind it was; scripts rely on these:

    0  ok
    1  a task failed: the generation failed, or a batch had failed or unknown lines
       (``credits audit``: a balance disagrees with the ledger)
    2  usage: bad arguments or options, a missing or unreadable file (``-i``, the batch
       file, its manifest), an output folder another ``batch`` is using, an unknown
       task/account/key (404), a refused input (422)
    3  auth or credits: the key is missing, wrong, revoked or expired (401), not enough
       credits (402)
    4  server or network: cannot connect, timed out, still rate limited after retries
       (429), maintenance (455), a server error (5xx, 505 included), a database that
       cannot be used (admin commands)

``serve``, ``worker`` and ``migrate`` exit 1 when they cannot start (a setting that does
not parse, a database that is refused, wrong or at another schema), as service managers
expect.

The admin and role commands end through here too; this module imports only the client's
errors, so that none of them loads the SDK.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn, Protocol, cast

import typer
from rich.console import Console

from bananastand.client.errors import (
    ApiError,
    AuthenticationError,
    BananastandError,
    FeatureDisabledError,
    GenerationFailedError,
    InsufficientCreditsError,
    MaintenanceError,
    NotFoundError,
    RateLimitError,
    TimeoutError,
    TransportError,
    ValidationError,
)
from bananastand.client.manifest import BatchFileError

#: Exit statuses (the table in the module docstring).
OK, TASK_FAILED, USAGE, AUTH, SERVER = 0, 1, 2, 3, 4
#: ``serve``, ``worker`` and ``migrate`` that could not start, whatever the reason.
NOT_STARTED = 1

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def say(message: str) -> None:
    """``error: message`` as one line on stderr (whatever newlines ``message`` holds)."""
    stderr.print("error: " + " ".join(message.split()), markup=False)


def fail(message: str, status: int) -> NoReturn:
    say(message)
    raise typer.Exit(status)


#: (kind, exit status, what to do), the first that matches wins.
_KINDS: tuple[tuple[type[BananastandError], int, str], ...] = (
    (GenerationFailedError, TASK_FAILED, ""),
    (BatchFileError, USAGE, ""),
    (AuthenticationError, AUTH, "check --api-key or BANANASTAND_API_KEY"),
    (
        InsufficientCreditsError,
        AUTH,
        "the account needs credits (its operator: bananastand credits add), or use a test key",
    ),
    (NotFoundError, USAGE, "check the id"),
    (ValidationError, USAGE, "fix that and run again"),
    (RateLimitError, SERVER, "still rate limited after retries: try again later"),
    (MaintenanceError, SERVER, "the server is under maintenance: try again later"),
    (FeatureDisabledError, SERVER, "switched off on this server: ask its operator"),
    (ApiError, SERVER, "the server failed: try again later, or look at its log"),
    (TimeoutError, SERVER, "it may still finish: see bananastand status"),
    (TransportError, SERVER, "no answer from the server: try again later, or check --base-url"),
)


def explain(exc: BananastandError) -> tuple[str, int]:
    """What a person reads for a client error (what happened, what to do) and the exit
    status of its kind."""
    if isinstance(exc, TransportError) and exc.unreachable is not None:
        return (
            f"cannot reach {exc.url} ({exc.unreachable}): is the server running? "
            "set --base-url or BANANASTAND_BASE_URL",
            SERVER,
        )
    if isinstance(exc, RateLimitError) and exc.retry_after is not None:
        wait = f"try again in {exc.retry_after:.0f} s"
        return f"{exc}: still rate limited after retries: {wait}", SERVER
    for kind, status, hint in _KINDS:
        if isinstance(exc, kind):
            return (f"{exc}: {hint}" if hint else str(exc)), status
    return str(exc), SERVER


@contextmanager
def client_errors() -> Iterator[None]:
    """A refused or failed call is one line on stderr and the exit status of its kind."""
    try:
        yield
    except BananastandError as exc:
        fail(*explain(exc))
    except OSError as exc:  # a local file: an image to upload, the folder to save in
        fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), USAGE)


class _ClickError(Protocol):
    exit_code: int

    def format_message(self) -> str: ...


def _click_error(name: str) -> type[Exception]:
    """A class of click's errors, from whichever click typer runs on (recent typers
    bundle their own copy of click, older ones use the ``click`` package)."""
    return next(kind for kind in typer.BadParameter.__mro__ if kind.__name__ == name)


def run(app: typer.Typer) -> NoReturn:
    """Run ``app`` as ``bananastand``: click's usage errors become one line too
    (``error: <what>: see '<command> --help'``), with click's exit status 2."""
    command = typer.main.get_command(app)
    try:
        status = command.main(standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except _click_error("ClickException") as exc:
        error = cast(_ClickError, exc)
        if type(exc).__name__ != "NoArgsIsHelpError":  # else typer has printed the help
            message = error.format_message().rstrip(".")
            ctx = getattr(exc, "ctx", None)
            if isinstance(exc, _click_error("UsageError")) and ctx is not None:
                message += f": see '{ctx.command_path} --help'"
            say(message)
        sys.exit(error.exit_code)
    sys.exit(status if isinstance(status, int) else OK)

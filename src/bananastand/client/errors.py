"""What the client raises: one tree, one class per envelope code and per way a call can end.

These are the client's own classes, not the server's ``bananastand.errors.ApiError`` family:
the server raises its errors to *produce* an envelope, the client raises these after
*reading* one (or failing to get one), so they carry what a caller needs - the envelope's
``code`` and ``msg``, ``Retry-After``, the failed task's failCode - and add outcomes the
server never raises (``ServerError``, ``GenerationFailedError``, ``TimeoutError``,
``TransportError``). They share the project's root, ``bananastand.errors.BananastandError``
(a module that imports only the standard library and the codes), with
``CallbackVerificationError``, so one ``except BananastandError`` catches everything the
client does on purpose; and they take their codes from the contract's table
(``bananastand.codes.Code``), as the server's classes do. ``ForbiddenError`` and
``GoneError`` stand for HTTP statuses, not envelope codes: file links answer plain HTTP.

    BananastandError
    ├── ApiError                      an envelope answered with code != 200 (or an HTTP error)
    │   ├── AuthenticationError       401
    │   ├── InsufficientCreditsError  402
    │   ├── ForbiddenError            HTTP 403: a file link that is not the server's
    │   ├── NotFoundError             404
    │   ├── GoneError                 HTTP 410: a file link that has expired
    │   ├── ValidationError           422
    │   ├── RateLimitError            429 (``retry_after`` from ``Retry-After``)
    │   ├── MaintenanceError          455
    │   ├── ServerError               500 (and any code this client does not know)
    │   └── FeatureDisabledError      505
    ├── GenerationFailedError         the task ended in ``fail`` (``fail_code``, ``fail_msg``)
    ├── TimeoutError                  a wait ran out of time; the task may still finish
    ├── TransportError                no answer: connection refused, reset, read timeout
    └── CallbackVerificationError     (client.webhooks) a callback that is not ours
"""

from __future__ import annotations

import builtins
from http import HTTPStatus
from typing import TYPE_CHECKING

from bananastand.codes import Code
from bananastand.errors import BananastandError

if TYPE_CHECKING:
    from bananastand.client.models import Task

__all__ = [
    "ApiError",
    "AuthenticationError",
    "BananastandError",
    "FeatureDisabledError",
    "ForbiddenError",
    "GenerationFailedError",
    "GoneError",
    "InsufficientCreditsError",
    "MaintenanceError",
    "NotFoundError",
    "RateLimitError",
    "ServerError",
    "TimeoutError",
    "TransportError",
    "ValidationError",
    "error_for_code",
]


class ApiError(BananastandError):
    """The server answered with an envelope whose ``code`` is not 200, or, where no
    envelope came (file links, a proxy in between), with an HTTP error status."""

    code: int = Code.SERVER_ERROR

    def __init__(self, msg: str, *, code: int | None = None, retry_after: float | None = None):
        super().__init__(msg)
        self.msg = msg
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.code}: {self.msg}"


class AuthenticationError(ApiError):
    code = Code.UNAUTHORIZED


class InsufficientCreditsError(ApiError):
    code = Code.INSUFFICIENT_CREDITS


class ForbiddenError(ApiError):
    """A download refused: the link is forged, tampered with or from another server."""

    code = HTTPStatus.FORBIDDEN


class NotFoundError(ApiError):
    code = Code.NOT_FOUND


class GoneError(ApiError):
    """A download past its link's expiry: ``download-url`` makes a fresh link."""

    code = HTTPStatus.GONE


class ValidationError(ApiError):
    code = Code.VALIDATION


class RateLimitError(ApiError):
    code = Code.RATE_LIMITED


class MaintenanceError(ApiError):
    code = Code.MAINTENANCE


class ServerError(ApiError):
    code = Code.SERVER_ERROR


class FeatureDisabledError(ApiError):
    code = Code.FEATURE_DISABLED


_BY_CODE: dict[int, type[ApiError]] = {
    cls.code: cls
    for cls in (
        AuthenticationError,
        InsufficientCreditsError,
        ForbiddenError,
        NotFoundError,
        GoneError,
        ValidationError,
        RateLimitError,
        MaintenanceError,
        ServerError,
        FeatureDisabledError,
    )
}


def error_for_code(code: int, msg: str, *, retry_after: float | None = None) -> ApiError:
    """The typed error of an envelope ``code``; unknown codes are server errors."""
    return _BY_CODE.get(code, ServerError)(msg, code=code, retry_after=retry_after)


class GenerationFailedError(BananastandError):
    """The task ended in ``fail``; ``fail_code`` is the contract's string ("400", "403", ...)."""

    def __init__(self, task: Task) -> None:
        super().__init__(f"task {task.taskId} failed ({task.failCode}): {task.failMsg}")
        self.task = task
        self.fail_code = task.failCode
        self.fail_msg = task.failMsg


class TimeoutError(BananastandError, builtins.TimeoutError):
    """A wait ended before the task did; ``task`` is the last record seen (it may finish later)."""

    def __init__(self, msg: str, task: Task | None = None) -> None:
        super().__init__(msg)
        self.task = task


class TransportError(BananastandError):
    """No envelope came back: the connection failed or the answer was not the contract's.

    ``unreachable`` says why no connection could be made at all ("connection refused",
    "name not resolved", ...) to ``url`` (scheme, host and port), so the request never
    left; it is ``None`` when a connection was made (the request may have arrived) or the
    answer was the problem. The CLI tells "is the server running?" apart from the rest by it.
    """

    def __init__(self, msg: str, *, url: str | None = None, unreachable: str | None = None):
        super().__init__(msg)
        self.url = url
        self.unreachable = unreachable

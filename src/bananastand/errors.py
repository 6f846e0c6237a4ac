"""The one exception tree of bananastand.

Domain code raises the most specific class; the API maps each class to an envelope
code in one handler (``api/envelope.py``), the worker maps task failures to failCodes.
Each ``ApiError`` takes its code from the contract's table (``codes.Code``), which the
client's tree (``client/errors.py``) takes its codes from too.

    BananastandError
    ├── ApiError                      -> an envelope answer with ``code``
    │   ├── AuthenticationError       401
    │   ├── InsufficientCreditsError  402
    │   ├── NotFoundError             404
    │   ├── ValidationError           422
    │   ├── RateLimitedError          429
    │   ├── MaintenanceError          455
    │   └── FeatureDisabledError      505
    ├── TaskFailure                   a task ends in ``fail`` with ``fail_code``
    │   ├── InputError                "400"  final: the caller's fault
    │   ├── SafetyBlocked             "403"  final: the caller's fault
    │   ├── UpstreamError             "500"  the next upstream of the route takes it
    │   └── UpstreamTimeout           "504"  the next upstream of the route takes it
    ├── LeaseLost                     a worker's lease was taken over; its write is void
    └── ConfigurationError            settings that cannot work
"""

from __future__ import annotations

from bananastand.codes import Code


class BananastandError(Exception):
    """Root of every error bananastand raises on purpose."""


class ApiError(BananastandError):
    """An error that becomes an envelope answer (HTTP 200, ``code`` carries the outcome)."""

    code: int = Code.SERVER_ERROR

    def __init__(self, msg: str, *, retry_after: float | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.retry_after = retry_after


class AuthenticationError(ApiError):
    code = Code.UNAUTHORIZED


class InsufficientCreditsError(ApiError):
    code = Code.INSUFFICIENT_CREDITS


class NotFoundError(ApiError):
    code = Code.NOT_FOUND


class ValidationError(ApiError):
    code = Code.VALIDATION


class RateLimitedError(ApiError):
    code = Code.RATE_LIMITED


class MaintenanceError(ApiError):
    code = Code.MAINTENANCE


class FeatureDisabledError(ApiError):
    code = Code.FEATURE_DISABLED


class TaskFailure(BananastandError):
    """A task cannot succeed on this upstream; ``fail_code`` is the contract's failCode.

    Whether another upstream may still succeed is the class's ``final``: a caller's error
    (bad input, a safety block) would fail the same way anywhere, and a second upstream
    must not bill for it; anything else is upstream trouble, and the route's next
    upstream takes the task. ``trip``: open this upstream's breaker now, without waiting
    for more failures (our key for it is wrong: every task would fail the same way).
    ``abandoned_calls``: calls given up on while the upstream may still be running (and
    billing) them, for the metrics.
    """

    fail_code: str = "500"
    #: Whether trying again later might succeed (upstream hiccups do, bad input never does).
    retryable: bool = False
    #: The caller's fault: no other upstream is tried.
    final: bool = False
    #: How the upstream answered, for the metrics: its HTTP status where it sent one,
    #: ``timeout``, ``connection``; empty: the failCode says it.
    upstream_status: str = ""

    def __init__(
        self,
        message: str,
        *,
        upstream_status: str = "",
        trip: bool = False,
        abandoned_calls: int = 0,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.trip = trip
        self.abandoned_calls = abandoned_calls
        if upstream_status:
            self.upstream_status = upstream_status


class InputError(TaskFailure):
    fail_code = "400"
    final = True


class SafetyBlocked(TaskFailure):
    fail_code = "403"
    final = True
    upstream_status = "200"  # the upstream answered; its answer was a refusal


class UpstreamError(TaskFailure):
    fail_code = "500"
    retryable = True


class UpstreamTimeout(TaskFailure):
    fail_code = "504"
    retryable = True
    upstream_status = "timeout"


class LeaseLost(BananastandError):
    """The task's lease now belongs to someone else; this worker must drop its result."""


class ConfigurationError(BananastandError):
    """Settings that cannot work together."""

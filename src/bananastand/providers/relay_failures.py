"""How a jobs-api upstream's answers end a relayed task.

==================================  ==========================================  ========
upstream                            raises                                      failover
==================================  ==========================================  ========
401 (our key for them is wrong)     ``UpstreamError``, ``trip``: breaker opens  yes
402 (no credits upstream)           ``UpstreamError``                           yes
429 (past the retry budget)         ``UpstreamError``                           yes
455 (maintenance), not waited out   ``UpstreamError``                           yes
505 (feature disabled)              ``UpstreamError``                           yes
422 (the request is not valid)      ``InputError`` (400)                        no
createTask's answer lost, or 500    ``StrandedUpstreamTask`` (500)              no
401 / 404 while following the task  ``StrandedUpstreamTask`` (500), ``trip``    no
task ``fail``: failCode 400 / 403   ``InputError`` / ``SafetyBlocked``          no
task ``fail``: 500 / 504            ``UpstreamError`` / ``UpstreamTimeout``     yes
task ``fail``: any other failCode   ``UpstreamError`` (500)                     yes
==================================  ==========================================  ========

Every message starts with the upstream's name, so a caller reading failMsg, or an
operator reading the log, knows who said it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bananastand.client.errors import (
    ApiError,
    AuthenticationError,
    InsufficientCreditsError,
    MaintenanceError,
    RateLimitError,
    TransportError,
    ValidationError,
)
from bananastand.client.models import Task
from bananastand.client.pacing import RetryPolicy
from bananastand.errors import (
    InputError,
    SafetyBlocked,
    TaskFailure,
    UpstreamError,
    UpstreamTimeout,
)

#: The upstream task's failCodes that are ours too; any other becomes "500".
_FAIL_CODES: dict[str, type[TaskFailure]] = {
    "400": InputError,
    "403": SafetyBlocked,
    "500": UpstreamError,
    "504": UpstreamTimeout,
}


@dataclass(frozen=True)
class FailoverRetry(RetryPolicy):
    """The client's backoff (429 paced by its ``Retry-After``), except that a 455 is
    not waited out: the next upstream of the route takes the task at once."""

    def delay(self, attempt: int, error: Exception, elapsed_s: float) -> float | None:
        if isinstance(error, MaintenanceError):
            return None
        return super().delay(attempt, error, elapsed_s)


def refusal(name: str, error: ApiError | TransportError, *, doing: str = "") -> TaskFailure:
    """What an answer that made nothing upstream means for the task."""
    where = f"{name}" + (f" ({doing})" if doing else "")
    if isinstance(error, TransportError):
        return UpstreamError(f"{where}: no answer: {error}", upstream_status="connection")
    status = str(error.code)
    if isinstance(error, ValidationError):
        return InputError(f"{where} rejected the request: {error.msg}", upstream_status=status)
    if isinstance(error, AuthenticationError):
        why = "refused our API key for it"
    elif isinstance(error, InsufficientCreditsError):
        why = "has no credits left for us"
    elif isinstance(error, RateLimitError):
        why = "kept rate limiting us past the retry budget"
    elif isinstance(error, MaintenanceError):
        why = "is in maintenance"
    else:
        why = "answered"
    return UpstreamError(
        f"{where} {why} ({error.code}): {error.msg}",
        upstream_status=status,
        trip=isinstance(error, AuthenticationError),
    )


class StrandedUpstreamTask(UpstreamError):
    """The upstream may hold a task of ours that we cannot follow (createTask's answer
    was lost, or it stopped answering for it): the task fails here, refunded, and goes
    to no other upstream, lest two of them make, and bill for, the same image."""

    final = True


def lost_create(name: str, reason: str) -> TaskFailure:
    return StrandedUpstreamTask(
        f"{name}: the answer to createTask was lost ({reason}); not sent again, so as not "
        "to pay twice (the upstream's table may set idempotency_keys = true)",
        upstream_status="lost",
    )


def stranded(name: str, handle: str, error: ApiError) -> TaskFailure:
    """The upstream refuses to tell us of its task ``handle`` (401: our key for it is
    wrong now, which opens its breaker; 404: it forgot the task)."""
    return StrandedUpstreamTask(
        f"{name} no longer answers for task {handle} ({error.code}): {error.msg}",
        upstream_status=str(error.code),
        trip=isinstance(error, AuthenticationError),
    )


def task_failure(name: str, record: Task) -> TaskFailure:
    """The upstream task's ``fail``, as ours: its failCode where it is one of ours."""
    failure = _FAIL_CODES.get(record.failCode, UpstreamError)
    message = f"{name}: {record.failMsg or 'generation failed'}"
    return failure(message, upstream_status=f"fail {record.failCode}".strip())

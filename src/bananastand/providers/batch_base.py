"""The interface of an upstream's Batch API, as the batch lane (``batch_lane``) uses it:
send some tasks' requests as one job under a display name, find it again by that name,
poll it, and read each task's outcome once it succeeded. Like ``providers.base``, it
knows nothing of tasks, leases or storage; keys are task ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from bananastand.errors import TaskFailure
from bananastand.providers.base import GeneratedImage, GenerationRequest


class JobProgress(StrEnum):
    OPEN = "open"
    SUCCEEDED = "succeeded"
    #: Failed, cancelled or expired: no task of it has an answer.
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class JobState:
    progress: JobProgress
    #: The upstream's own word for it, for logs and failMsg (``JOB_STATE_EXPIRED``).
    state: str


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One task's request: ``key`` is the task's id."""

    key: str
    request: GenerationRequest


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One task's outcome in a job that succeeded: an image or a failure."""

    key: str
    image: GeneratedImage | None = None
    failure: TaskFailure | None = None


class BatchUpstream(Protocol):
    """One upstream's Batch API; ``name`` is the upstream's (what tasks name as provider)."""

    name: str

    async def submit(self, model: str, display_name: str, items: Sequence[BatchItem]) -> str:
        """Create the job; the upstream's name for it. Raises a ``TaskFailure`` when the
        job can never be sent, anything else when it may be sent again later."""
        ...

    async def find(self, display_name: str) -> str | None:
        """The upstream's name of the job created under ``display_name``, if any."""
        ...

    async def state(self, job_name: str) -> JobState: ...

    async def cancel(self, job_name: str) -> None: ...

    async def results(self, job_name: str, keys: Sequence[str]) -> list[ItemResult]:
        """Each key's outcome (``keys``: in the order sent); a key without an answer fails."""
        ...

    async def aclose(self) -> None: ...

"""The interface every image-generation provider implements.

A provider turns one validated request (prompt, input images as bytes) into one image,
or raises a :class:`bananastand.errors.TaskFailure` subclass that says which failCode the
task ends with. Providers know nothing about tasks, leases, storage or HTTP clients of
ours: the worker fetches the inputs and stores the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bananastand.contract import AspectRatio, Lane, OutputFormat, Resolution
from bananastand.providers.limits import UpstreamLimiter


@dataclass(frozen=True, slots=True)
class InputImage:
    data: bytes
    mime_type: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """``image_urls``: the caller's ``image_input`` as sent, in the order of ``images``:
    an upstream that fetches inputs itself (a relay) passes foreign links on rather than
    the bytes."""

    model: str
    prompt: str
    images: Sequence[InputImage] = ()
    aspect_ratio: AspectRatio = AspectRatio.R1_1
    resolution: Resolution = Resolution.R1K
    output_format: OutputFormat = OutputFormat.PNG
    image_urls: tuple[str, ...] = ()
    #: The task's lane: a batch-lane task reaches a provider only on the sandbox (its
    #: batch delay) or after its batch job failed (the now lane's run, once).
    lane: Lane = Lane.NOW


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """The provider's image; ``mime_type`` may differ from the requested output format
    (the worker converts), so providers never re-encode what they were given."""

    data: bytes
    mime_type: str
    #: Free-form facts worth keeping on the task (upstream latency, token usage, ...).
    usage: dict[str, int | float | str] = field(default_factory=dict)


class Attempt(Protocol):
    """One task's turn on one upstream, as the worker hands it to the provider.

    The provider says when the task starts generating, so that an upstream that knows
    the task by a handle of its own (a relayed task's upstream taskId) has it written
    first: a worker that restarts finds the handle and follows that upstream task rather
    than creating a second one. Both writes are fenced by the task's lease and raise
    ``LeaseLost`` when it is gone.
    """

    task_id: str
    #: What this upstream knows the task by from an earlier attempt, or None.
    handle: str | None

    async def remember(self, handle: str) -> None:
        """Write the handle before a call whose lost answer must not be repeated."""
        ...

    async def started(self, handle: str | None = None) -> None:
        """The task is ``generating`` on this upstream now (by ``handle``, if any)."""
        ...


class Provider(Protocol):
    """What the worker calls; one instance serves many concurrent tasks."""

    name: str
    #: Held by the worker around ``generate``: while a task waits here it is ``queuing``.
    limiter: UpstreamLimiter

    async def generate(self, request: GenerationRequest, attempt: Attempt) -> GeneratedImage:
        """Make one image, or raise a ``TaskFailure`` subclass naming the failCode; call
        ``attempt.started()`` once, when the upstream call is about to begin."""
        ...

    async def aclose(self) -> None:
        """Release connections; called once at shutdown."""
        ...


class DetachedAttempt:
    """An attempt with no task row behind it, for calling a provider outside a worker (a
    benchmark of the upstream path, a provider's own tests): it writes nothing and keeps
    what it was told, so a caller can see the handle a provider remembered."""

    def __init__(self, task_id: str = "detached", handle: str | None = None) -> None:
        self.task_id = task_id
        self.handle = handle
        self.starts = 0

    async def remember(self, handle: str) -> None:
        self.handle = handle

    async def started(self, handle: str | None = None) -> None:
        self.handle = handle
        self.starts += 1

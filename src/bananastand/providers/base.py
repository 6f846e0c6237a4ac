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

from bananastand.contract import AspectRatio, OutputFormat, Resolution
from bananastand.providers.limits import UpstreamLimiter


@dataclass(frozen=True, slots=True)
class InputImage:
    data: bytes
    mime_type: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    model: str
    prompt: str
    images: Sequence[InputImage] = ()
    aspect_ratio: AspectRatio = AspectRatio.R1_1
    resolution: Resolution = Resolution.R1K
    output_format: OutputFormat = OutputFormat.PNG


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """The provider's image; ``mime_type`` may differ from the requested output format
    (the worker converts), so providers never re-encode what they were given."""

    data: bytes
    mime_type: str
    #: Free-form facts worth keeping on the task (upstream latency, token usage, ...).
    usage: dict[str, int | float | str] = field(default_factory=dict)


class Provider(Protocol):
    """What the worker calls; one instance serves many concurrent tasks."""

    name: str
    #: Held by the worker around ``generate``: while a task waits here it is ``queuing``.
    limiter: UpstreamLimiter

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        """Make one image, or raise a ``TaskFailure`` subclass naming the failCode."""
        ...

    async def aclose(self) -> None:
        """Release connections; called once at shutdown."""
        ...

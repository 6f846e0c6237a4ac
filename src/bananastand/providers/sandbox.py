"""The offline ``sandbox`` provider: real images, no upstream, no API key, no cost.

Integrators need to exercise the whole task lifecycle (submit, poll, callback, download,
failure handling) in CI and on a laptop without paying for Nano Banana Pro or depending on
the network. So this provider answers like the real one where it matters to a client:

* the image has the exact pixel size Nano Banana Pro returns for the aspect ratio and
  resolution (``auto`` follows the first input image's shape, else 1:1), and is really
  encoded in the requested format, so size checks and decoders behave as in production;
* the same request always yields the same bytes, so clients can snapshot-test outputs;
* the picture is plainly marked SANDBOX and shows the prompt, model, resolution, aspect
  ratio and thumbnails of the inputs, so nobody mistakes it for a generated image and
  integrators can see that their prompt and images arrived intact and in order.

Magic prompts, in the spirit of payment-provider test cards, let integrators trigger each
failure path on demand. Put the tag anywhere in the prompt:

==========================  ===================  ========
tag                         raises               failCode
==========================  ===================  ========
``[sandbox:fail=input]``    ``InputError``       400
``[sandbox:fail=safety]``   ``SafetyBlocked``    403
``[sandbox:fail=upstream]`` ``UpstreamError``    500
``[sandbox:fail=timeout]``  ``UpstreamTimeout``  504
``[sandbox:delay=MS]``      waits MS milliseconds (at most 600000) before answering
==========================  ===================  ========

Delays come first, then failures, so ``[sandbox:delay=30000][sandbox:fail=timeout]``
behaves like a real upstream that hangs and then gives up. An unknown ``fail=`` mode is an
``InputError`` rather than silently succeeding, so a typo in a test shows up at once.
The constructor's ``delay_ms`` is added to every task, to make a whole deployment feel
as slow as the real service, and its ``batch_delay_ms`` to every batch-lane task (test
keys' batch-lane tasks run here, a little later than the rest, as batch jobs do).
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections import OrderedDict

from bananastand.contract import Lane
from bananastand.errors import (
    ConfigurationError,
    InputError,
    SafetyBlocked,
    TaskFailure,
    UpstreamError,
    UpstreamTimeout,
)
from bananastand.providers.base import Attempt, GeneratedImage, GenerationRequest
from bananastand.providers.limits import UpstreamLimiter
from bananastand.providers.local_limiter import LocalLimiter
from bananastand.providers.sandbox_render import Render, render, request_key

__all__ = ["MAGIC_PROMPTS", "MAX_MAGIC_DELAY_MS", "SandboxProvider"]

#: Upper bound of ``[sandbox:delay=MS]``: long enough to test client timeouts, short
#: enough that a stray tag cannot pin a worker slot for hours.
MAX_MAGIC_DELAY_MS = 600_000

_FAIL_RE = re.compile(r"\[sandbox:fail=([A-Za-z_-]*)\]", re.IGNORECASE)
_DELAY_RE = re.compile(r"\[sandbox:delay=(\d{1,12})\]", re.IGNORECASE)

_FAILURES: dict[str, tuple[type[TaskFailure], str]] = {
    "input": (InputError, "sandbox: request rejected as invalid input ([sandbox:fail=input])"),
    "safety": (SafetyBlocked, "sandbox: blocked by safety filters (IMAGE_SAFETY)"),
    "upstream": (UpstreamError, "sandbox: simulated upstream error ([sandbox:fail=upstream])"),
    "timeout": (UpstreamTimeout, "sandbox: simulated upstream timeout ([sandbox:fail=timeout])"),
}
#: Each ``fail=`` mode in a few words, for people reading `MAGIC_PROMPTS`.
_FAILURE_WORDS = {
    "input": "invalid input",
    "safety": "safety block",
    "upstream": "upstream error",
    "timeout": "upstream timeout",
}
#: The magic tags and what each does, as ``GET /api/v1/models`` lists them for test keys.
MAGIC_PROMPTS: tuple[tuple[str, str], ...] = (
    *(
        (f"[sandbox:fail={mode}]", f"fails with failCode {cls.fail_code} ({_FAILURE_WORDS[mode]})")
        for mode, (cls, _message) in _FAILURES.items()
    ),
    (
        "[sandbox:delay=MS]",
        f"waits MS milliseconds (at most {MAX_MAGIC_DELAY_MS}) in generating before it ends",
    ),
)


class SandboxProvider:
    """A provider that draws a labelled placeholder instead of calling Google.

    Renders are cached (LRU, ``cache_size`` entries, 0 disables) because the output is a
    pure function of the request and a 4K encode is the only real cost here; identical
    requests in flight at the same time share one render.
    """

    name = "sandbox"

    def __init__(self, *, delay_ms: int = 0, batch_delay_ms: int = 0, cache_size: int = 64) -> None:
        if delay_ms < 0 or batch_delay_ms < 0:
            raise ConfigurationError("sandbox delay_ms and batch_delay_ms must be >= 0")
        if cache_size < 0:
            raise ConfigurationError("sandbox cache_size must be >= 0")
        self.delay_ms = delay_ms
        self.batch_delay_ms = batch_delay_ms
        self.cache_size = cache_size
        #: No upstream to protect: never waits.
        self.limiter: UpstreamLimiter = LocalLimiter()
        #: How many renders actually ran (cache misses); lets tests and metrics see reuse.
        self.renders = 0
        self._cache: OrderedDict[bytes, Render] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[Render]] = {}

    async def generate(self, request: GenerationRequest, attempt: Attempt) -> GeneratedImage:
        await attempt.started()
        delay_ms = self.delay_ms + _magic_delay_ms(request.prompt)
        if request.lane is Lane.BATCH:
            delay_ms += self.batch_delay_ms
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        failure = _magic_failure(request.prompt)
        if failure is not None:
            raise failure

        key = request_key(request)
        render, how = await self._render(key, request)
        usage: dict[str, int | float | str] = {
            "provider": self.name,
            "render_ms": render.render_ms,
            "cache": how,
            "width": render.width,
            "height": render.height,
            "aspect_ratio": render.aspect_ratio.value,
        }
        if delay_ms > 0:
            usage["delay_ms"] = delay_ms
        return GeneratedImage(
            data=render.data, mime_type=request.output_format.mime_type, usage=usage
        )

    async def aclose(self) -> None:
        self._cache.clear()

    async def _render(self, key: bytes, request: GenerationRequest) -> tuple[Render, str]:
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached, "hit"
        loop = asyncio.get_running_loop()
        pending = self._inflight.get(key)
        if pending is not None and pending.get_loop() is loop:
            # Shielded so that one waiter being cancelled does not cancel the others.
            return await asyncio.shield(pending), "joined"

        self.renders += 1
        task = asyncio.ensure_future(asyncio.to_thread(render, request, key))
        self._inflight[key] = task
        task.add_done_callback(functools.partial(self._settle, key))
        return await asyncio.shield(task), "miss"

    def _settle(self, key: bytes, task: asyncio.Future[Render]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        # Reading the exception marks it retrieved even when every waiter was cancelled.
        if task.cancelled() or task.exception() is not None or self.cache_size == 0:
            return
        self._cache[key] = task.result()
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


# --------------------------------------------------------------------------- magic tags


def _magic_delay_ms(prompt: str) -> int:
    match = _DELAY_RE.search(prompt)
    return min(int(match.group(1)), MAX_MAGIC_DELAY_MS) if match else 0


def _magic_failure(prompt: str) -> TaskFailure | None:
    match = _FAIL_RE.search(prompt)
    if match is None:
        return None
    mode = match.group(1).lower()
    if mode not in _FAILURES:
        known = ", ".join(sorted(_FAILURES))
        return InputError(f"sandbox: unknown magic prompt fail={mode!r} (known: {known})")
    # A fresh instance per task: exceptions carry tracebacks and must not be shared.
    cls, message = _FAILURES[mode]
    return cls(message)

"""Caps on how hard one upstream is driven: calls in flight and calls per minute.

Google answers a burst with 429s; queuing the burst here instead costs nothing and keeps
the retry budget for real hiccups. The worker takes a `UpstreamLimiter.slot` before it
marks a task ``generating``, so a task waiting for a slot stays ``queuing`` where clients
can see it; a provider that retries inside its slot calls `UpstreamLimiter.pace` before
each further attempt so retries count against the rate too.

The settings mean the whole cluster, not each process. Two adapters keep them so:
`bananastand.providers.local_limiter.LocalLimiter` splits the budget among the worker
processes that share it (each one's share is counted in its own memory), and
`bananastand.providers.redis_limiter.RedisLimiter` keeps one budget in Redis for every
process at once (``BANANASTAND_REDIS_URL``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

#: How many worker processes share an upstream's budget right now. The live-worker
#: registry provides the real count; a process that knows of no others is alone.
WorkerCount = Callable[[], int]


def one_process() -> int:
    """The share when nothing counts the live workers: this process has it all."""
    return 1


class UpstreamLimiter(Protocol):
    """What the worker and the providers call; one instance per upstream."""

    def slot(self) -> AbstractAsyncContextManager[None]:
        """Wait for a free slot and the rate's next turn; the slot is held until exit."""
        ...

    async def pace(self) -> None:
        """Wait until the next request may start under the rate cap."""
        ...

    async def aclose(self) -> None:
        """Release what the limiter holds (connections); called once at shutdown."""
        ...

"""An upstream's API keys, taken in turn; a key Google answered 429 rests a while.

Google's quotas are per key (per project behind it): a team with several keys spreads its
calls over them, and a key that is out of quota (429 RESOURCE_EXHAUSTED) is skipped until
Google's ``RetryInfo.retryDelay`` has passed (else the upstream's cool-down) while the
other keys take the calls. Each key of a pool of several has a limiter of its own that
paces it to the per-key rate; the upstream's limiter holds the whole pool to its
concurrency.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bananastand.providers.limits import UpstreamLimiter

C = TypeVar("C")

_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


@dataclass(slots=True)
class PooledKey(Generic[C]):
    """One key's client; ``index`` names it in logs and metrics (never the secret)."""

    index: int
    client: C
    #: Paces this key alone (None: the pool has one key; the upstream's limiter does it).
    limiter: UpstreamLimiter | None = None
    #: ``time.monotonic()`` until which the key is skipped.
    resting_until: float = 0.0


class KeyPool(Generic[C]):
    def __init__(self, keys: Sequence[PooledKey[C]]) -> None:
        if not keys:
            raise ValueError("a key pool needs a key")
        self.keys = list(keys)
        self._turns = itertools.cycle(range(len(self.keys)))

    def __len__(self) -> int:
        return len(self.keys)

    def next_key(self) -> PooledKey[C] | None:
        """The next key in turn that is not resting, or None while all are."""
        now = time.monotonic()
        for _ in range(len(self.keys)):
            key = self.keys[next(self._turns)]
            if key.resting_until <= now:
                return key
        return None

    def rest(self, key: PooledKey[C], seconds: float) -> None:
        key.resting_until = max(key.resting_until, time.monotonic() + seconds)

    def seconds_until_one_wakes(self) -> float:
        soonest = min(key.resting_until for key in self.keys)
        return max(0.0, soonest - time.monotonic())

    async def aclose(self) -> None:
        for key in self.keys:
            if key.limiter is not None:
                await key.limiter.aclose()


def retry_delay(error_body: Mapping[str, Any] | None) -> float | None:
    """Google's ``RetryInfo.retryDelay`` in an error body (``"2s"``, ``"0.5s"``), if any."""
    error = (error_body or {}).get("error")
    details = error.get("details") if isinstance(error, Mapping) else None
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, Mapping) and detail.get("@type") == _RETRY_INFO:
            match = _DURATION.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None

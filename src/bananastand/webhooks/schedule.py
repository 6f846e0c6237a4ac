"""Whether and when a callback is (re)sent: what an attempt's answer means, the delay
before the next one, and the callbacks the operator's deny list keeps from being sent."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from bananastand.addresses import HostList

#: Retries are spread by this fraction either way, so receivers back up together
#: do not get their retries all at once.
JITTER = 0.1
#: The longest a ``Retry-After`` may push an attempt back.
MAX_RETRY_AFTER_S = 24 * 3600.0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait, from ``Retry-After`` as seconds or an HTTP date; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when.timestamp() - time.time()), MAX_RETRY_AFTER_S)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one attempt means for the callback."""

    success: bool
    error: str
    #: Whether the receiver said never to try again (410 Gone).
    final: bool = False
    retry_after_s: float | None = None


def judge(status: int, headers: Mapping[str, str]) -> Verdict:
    """Only a 2xx delivers; a redirect is a failure (never followed); 410 stops."""
    if 200 <= status < 300:
        return Verdict(success=True, error="")
    if 300 <= status < 400:
        location = headers.get("location")
        where = f" to {location}" if location else ""
        return Verdict(success=False, error=f"redirect not followed (HTTP {status}{where})")
    if status == 410:
        return Verdict(
            success=False, error="HTTP 410 Gone: the receiver asked us to stop", final=True
        )
    return Verdict(
        success=False,
        error=f"HTTP {status}",
        retry_after_s=parse_retry_after(headers.get("retry-after")),
    )


def denied(deny: HostList, url: str) -> str | None:
    """Why a callback to ``url`` is never sent, or None. The operator's deny list exists
    because some clients put a third party's URL (their reseller's proxy) into every task:
    this server must not post its users' signed results there."""
    host = urlsplit(url).hostname or ""
    if not deny.matches(host):
        return None
    return f"not sent: the server setting BANANASTAND_CALLBACK_DENY_HOSTS refuses {host}"


def next_delay_s(
    schedule: list[float], attempts_made: int, retry_after_s: float | None
) -> float | None:
    """Seconds until the next attempt after ``attempts_made`` failed ones; None: give up.

    ``schedule[n]`` is the delay before attempt ``n + 1`` (``schedule[0]``, "now", is the
    first attempt's, made as the task ends).
    """
    if attempts_made >= len(schedule):
        return None
    delay = schedule[attempts_made] * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay

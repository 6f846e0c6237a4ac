"""What a fetch may reach: the operator's settings, the URL rules and the address check.

The backend asks `check_addresses` about every address a host resolved to, right before
it connects; the fetcher asks `check_url` about the first URL and each redirect's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import httpx

from bananastand.addresses import (
    ALLOW_HINT,
    AllowList,
    IPAddress,
    is_public_address,
    parse_ip_literal,
)
from bananastand.fetch.errors import BlockedAddressError, FetchError

logger = logging.getLogger(__name__)

_ALLOWED_SCHEMES: Final = frozenset({"http", "https"})


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """What a `SafeFetcher` may do.

    ``allow`` holds CIDR networks (``"10.0.0.0/8"``, ``"::1/128"``, a bare address is a
    single-address network) and/or host names (``"files.internal"``, exact match, case
    and a trailing dot ignored; ``"*.corp.example"`` matches every name below
    ``corp.example``). An address inside an allowed network, or any address of a host
    whose name is allowed, may be reached although it is not public. Empty by default:
    only the public internet.
    """

    allow: tuple[str, ...] = ()
    max_bytes: int = 30 * 1024 * 1024
    timeout_s: float = 30.0  # whole-fetch wall clock cap, including body streaming
    connect_timeout_s: float = 10.0
    max_redirects: int = 3
    user_agent: str = "bananastand"


def check_url(url: str | httpx.URL) -> httpx.URL:
    """Parse ``url`` and refuse anything but an absolute http(s) URL with a host."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise FetchError(f"refused to fetch: invalid URL ({exc})") from None
    if parsed.scheme not in _ALLOWED_SCHEMES:
        scheme = parsed.scheme or "(none)"
        raise FetchError(
            f"refused to fetch: URL scheme {scheme!r} is not allowed, only http and https"
        )
    if not parsed.host:
        raise FetchError("refused to fetch: the URL has no host")
    return parsed


def check_addresses(allow: AllowList, host: str, addresses: Sequence[IPAddress]) -> None:
    """Refuse ``host`` unless every address it resolved to is public or allowed.

    One private address among public ones is enough to refuse: a name that resolves to
    both would otherwise reach the private one on some attempts. The message names the
    host as written; the address goes to the log only.
    """
    if allow.allows_name(host):
        return
    for addr in addresses:
        if is_public_address(addr) or allow.allows_address(addr):
            continue
        logger.warning("fetch refused: host %r resolved to non-public %s", host, addr)
        if parse_ip_literal(host) is not None:
            raise BlockedAddressError(
                f"refused to fetch from {host}: not a publicly routable address {ALLOW_HINT}"
            )
        raise BlockedAddressError(
            f"refused to fetch from {host!r}: the host resolves to an address "
            f"that is not publicly routable {ALLOW_HINT}"
        )

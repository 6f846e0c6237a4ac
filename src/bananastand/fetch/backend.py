"""The network backend under the fetcher's connection pool: the only code that opens sockets.

It resolves a host once, has the policy check every address, and connects to a checked
address, so no request of the pool can reach a socket around the check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import httpcore

# httpcore's own default backend (what AsyncConnectionPool uses when given none). It is
# not re-exported at httpcore's top level, hence the private import; pinned by httpx's
# dependency on httpcore 1.x.
from httpcore._backends.auto import AutoBackend

from bananastand.addresses import AllowList, IPAddress, parse_ip_literal
from bananastand.fetch.errors import BlockedAddressError
from bananastand.fetch.policy import check_addresses

#: Resolves a host name to IP address strings; the default asks the system resolver.
#: Injectable so tests can make any name resolve anywhere without real DNS.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


async def system_resolve(host: str, port: int) -> list[str]:
    """The system resolver's IPv4 and IPv6 addresses for ``host``."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [
        str(sockaddr[0])
        for family, _type, _proto, _canon, sockaddr in infos
        if family in (socket.AF_INET, socket.AF_INET6)
    ]


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that resolves once, checks, and connects to the check.

    httpcore calls ``connect_tcp`` for every new connection of the pool (pooled
    connections are reused only for the same scheme/host/port origin, and they were
    checked when they were opened), so no request can reach a socket around this check.

    Connecting to an IP literal keeps TLS correct: in httpcore 1.0.x,
    ``AsyncHTTPConnection._connect`` (httpcore/_async/connection.py) calls
    ``stream.start_tls(server_hostname=sni_hostname or self._origin.host)`` with the
    *URL's* host, not the ``host`` argument this method got, so SNI and certificate
    verification use the host name. The ``Host`` header comes from the unchanged URL.
    The inner backend (anyio's ``connect_tcp``) skips name resolution for an IP literal,
    so there is no second lookup.
    """

    def __init__(self, allow: AllowList, resolver: Resolver | None = None) -> None:
        self._allow = allow
        self._resolver = resolver or system_resolve
        self._inner: httpcore.AsyncNetworkBackend = AutoBackend()

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        literal = parse_ip_literal(host)
        if literal is not None:
            return [literal]
        try:
            found = await self._resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"could not resolve host {host!r}") from exc
        addresses: list[IPAddress] = []
        for text in found:
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                continue
            if addr not in addresses:
                addresses.append(addr)
        if not addresses:
            raise httpcore.ConnectError(f"could not resolve host {host!r}")
        return addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host!r} timed out") from exc
        check_addresses(self._allow, host, addresses)

        last_error: Exception | None = None
        for addr in addresses:  # in resolver order, each one already checked
            remaining = None if timeout is None else timeout - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                raise httpcore.ConnectTimeout(f"connecting to {host!r} timed out")
            try:
                return await self._inner.connect_tcp(
                    addr.compressed,
                    port,
                    timeout=remaining,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None  # addresses is never empty
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Never: a URL cannot name a socket file, and the pool is built without ``uds``."""
        raise BlockedAddressError("refused to fetch: unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)

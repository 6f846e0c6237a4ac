"""The one SSRF-safe outbound HTTP client of bananastand.

Every request this server makes to a URL that came from outside (task ``image_input``
URLs today; file-url uploads and webhook callbacks later) goes through `SafeFetcher`.
A URL from a user must never let that user reach what only the server can reach: cloud
metadata endpoints, the database, admin consoles on localhost, the office LAN.

The rules, all enforced here and nowhere else:

* Resolve the host **once**; refuse if **any** resolved address is not globally
  routable (`is_public_address`), then connect to the very address that was checked.
  Checking one lookup and connecting after a second one is the classic DNS-rebinding
  hole, so the check lives inside the network backend's ``connect_tcp``, the only place
  that opens sockets. Every connection, redirects included, passes through it.
* Keep ``Host`` and TLS SNI / certificate checks on the host name: the URL is never
  rewritten, only the socket is opened to the checked IP literal.
* Only ``http`` and ``https``, at every hop; follow at most ``max_redirects`` redirects.
* Ignore proxy environment variables (a proxy would do the resolving for us, unchecked),
  and keep no cookies (one fetcher serves every tenant).
* Stream the body with a byte cap and the whole fetch with a wall-clock cap; decide the
  media type from magic bytes (``image_types``), never from the server's ``Content-Type``.
* An operator allow-list (`FetchPolicy.allow`) of networks and host names lets a
  self-hosted deployment reach its own private hosts (and lets tests use loopback fakes).

Error messages name what the caller gave (the host as written in a URL), never what a
host name resolved to: an internal address must not leak through a task's failMsg.
The resolved addresses go to the log, for the operator.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

import httpcore
import httpx

# httpcore's own default backend (what AsyncConnectionPool uses when given none). It is
# not re-exported at httpcore's top level, hence the private import; pinned by httpx's
# dependency on httpcore 1.x.
from httpcore._backends.auto import AutoBackend

from bananastand.addresses import (
    ALLOW_HINT,
    AllowList,
    IPAddress,
    is_public_address,
    parse_ip_literal,
)
from bananastand.errors import ConfigurationError, InputError
from bananastand.image_types import SNIFF_BYTES, sniff_image_type

__all__ = [
    "BlockedAddressError",
    "FetchError",
    "FetchPolicy",
    "FetchTimeoutError",
    "FetchedImage",
    "Resolver",
    "SafeFetcher",
    "TooLargeError",
    "UnsupportedMediaError",
]

logger = logging.getLogger(__name__)

#: Resolves a host name to IP address strings; the default asks the system resolver.
#: Injectable so tests can make any name resolve anywhere without real DNS.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

#: Most bytes of a webhook's answer that `SafeFetcher.post` keeps (the rest is dropped).
POST_RESPONSE_MAX_BYTES: Final = 64 * 1024

_ALLOWED_SCHEMES: Final = frozenset({"http", "https"})
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_BODYLESS_METHODS: Final = frozenset({"GET", "HEAD"})


# --------------------------------------------------------------------------- policy


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


# --------------------------------------------------------------------------- errors


class FetchError(InputError):
    """An outbound fetch was refused or failed; the task fails with failCode "400".

    The URL came from the user, so a URL we cannot or will not fetch is bad input.
    """


class BlockedAddressError(FetchError):
    """The URL's host is (or resolves to) an address the policy does not allow."""


class TooLargeError(FetchError):
    """The body is larger than `FetchPolicy.max_bytes`."""


class FetchTimeoutError(FetchError):
    """The fetch took longer than its time cap (connect, or the whole fetch)."""


class UnsupportedMediaError(FetchError):
    """The body is not an image type we accept (decided by magic bytes)."""


# --------------------------------------------------------------------------- network


class _GuardedBackend(httpcore.AsyncNetworkBackend):
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

    def _check(self, host: str, addresses: list[IPAddress]) -> None:
        if self._allow.allows_name(host):
            return
        for addr in addresses:
            if is_public_address(addr) or self._allow.allows_address(addr):
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
        self._check(host, addresses)

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


async def system_resolve(host: str, port: int) -> list[str]:
    """The system resolver's IPv4 and IPv6 addresses for ``host``."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [
        str(sockaddr[0])
        for family, _type, _proto, _canon, sockaddr in infos
        if family in (socket.AF_INET, socket.AF_INET6)
    ]


# --------------------------------------------------------------------------- transport

# httpcore exception -> httpx exception, most specific first (mirrors httpx's own
# httpx/_transports/default.py, which keeps its mapping private).
_EXC_MAP: Final[tuple[tuple[type[Exception], type[httpx.TransportError]], ...]] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _map_httpcore_exceptions() -> Iterator[None]:
    """Re-raise httpcore errors as httpx errors; anything else (our refusals) as is."""
    try:
        yield
    except Exception as exc:
        for core_exc, httpx_exc in _EXC_MAP:
            if isinstance(exc, core_exc):
                raise httpx_exc(str(exc)) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    """httpcore's response body as an httpx stream, with httpcore errors mapped."""

    def __init__(self, core_stream: AsyncIterable[bytes]) -> None:
        self._core_stream = core_stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _map_httpcore_exceptions():
            async for part in self._core_stream:
                yield part

    async def aclose(self) -> None:
        aclose = getattr(self._core_stream, "aclose", None)
        if aclose is not None:
            await aclose()


class _GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore pool that uses `_GuardedBackend`.

    httpx 0.28's ``AsyncHTTPTransport`` cannot be given a network backend, hence this
    small copy of its request/response mapping. It never looks at the environment: no
    proxies. Certificate verification is httpx's default (certifi; ``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` are honoured so a self-hosted deployment can trust its own CA).
    """

    def __init__(
        self,
        allow: AllowList,
        ssl_context: ssl.SSLContext | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            # httpx's default limits.
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            http1=True,
            http2=False,
            network_backend=_GuardedBackend(allow, resolver),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _map_httpcore_exceptions():
            core_response = await self._pool.handle_async_request(core_request)
        assert isinstance(core_response.stream, AsyncIterable)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseStream(core_response.stream),
            extensions=core_response.extensions,
            request=request,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


# --------------------------------------------------------------------------- images


@dataclass(frozen=True, slots=True)
class FetchedImage:
    """An image fetched from a URL, its type decided by magic bytes."""

    data: bytes
    mime_type: str  # image/jpeg, image/png or image/webp
    url: str  # the final URL after redirects


# --------------------------------------------------------------------------- fetcher


def _check_url(url: str | httpx.URL) -> httpx.URL:
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


class SafeFetcher:
    """The SSRF-safe outbound HTTP client; one per process, shared by every task.

    It holds one connection pool for its lifetime, so repeated fetches from the same
    origin reuse connections. Close it with `aclose` (or ``async with``).
    """

    def __init__(self, policy: FetchPolicy, *, resolver: Resolver | None = None) -> None:
        if policy.max_bytes <= 0:
            raise ConfigurationError("fetch max_bytes must be positive")
        if policy.timeout_s <= 0 or policy.connect_timeout_s <= 0:
            raise ConfigurationError("fetch timeouts must be positive")
        if policy.max_redirects < 0:
            raise ConfigurationError("fetch max_redirects must not be negative")
        self._policy = policy
        self._transport = _GuardedTransport(AllowList.parse(policy.allow), resolver=resolver)

    async def __aenter__(self) -> SafeFetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._transport.aclose()

    # ----------------------------------------------------------------- public calls

    async def fetch_image(self, url: str) -> FetchedImage:
        """GET ``url`` (following up to ``max_redirects`` checked redirects) as an image.

        Raises a `FetchError` subclass on anything but a 2xx answer whose body is at
        most ``max_bytes`` of PNG, JPEG or WebP, all within ``timeout_s``.
        """
        policy = self._policy
        try:
            async with asyncio.timeout(policy.timeout_s):
                response = await self._open(
                    "GET",
                    url,
                    headers={
                        "Accept": "image/png, image/jpeg, image/webp",
                        # Images are compressed already; a raw body is what we cap.
                        "Accept-Encoding": "identity",
                    },
                    content=None,
                    follow_redirects=True,
                    read_timeout_s=policy.timeout_s,
                )
                try:
                    if not response.is_success:
                        raise FetchError(
                            f"fetching the image failed: {response.url.host!r} "
                            f"answered HTTP {response.status_code}"
                        )
                    data, mime_type = await self._read_image(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise FetchTimeoutError(
                f"fetching the image took longer than {policy.timeout_s:g} s"
            ) from None
        return FetchedImage(data=data, mime_type=mime_type, url=str(response.url))

    async def post(
        self,
        url: str,
        *,
        content: bytes,
        headers: Mapping[str, str],
        timeout_s: float,
    ) -> httpx.Response:
        """POST ``content`` to ``url`` and return the answer, whatever its status.

        Made for webhook callbacks: redirects are never followed (a 3xx comes back as
        the result), and only the first `POST_RESPONSE_MAX_BYTES` bytes of the answer's
        body are read. The returned response is detached from the connection; its
        ``content`` is that raw, possibly truncated body, so the ``Content-Length`` and
        ``Content-Encoding`` headers, which describe the original body, are removed.
        ``timeout_s`` caps the whole call. Refusals and transport failures raise a
        `FetchError` subclass.
        """
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._open(
                    "POST",
                    url,
                    headers=_merge_headers({"Accept-Encoding": "identity"}, headers),
                    content=content,
                    follow_redirects=False,
                    read_timeout_s=timeout_s,
                )
                try:
                    body = bytearray()
                    async for chunk in response.aiter_raw():
                        body += chunk
                        if len(body) >= POST_RESPONSE_MAX_BYTES:
                            del body[POST_RESPONSE_MAX_BYTES:]
                            break
                except httpx.HTTPError as exc:
                    raise _fetch_error(exc, response.url.host) from None
                finally:
                    await response.aclose()
        except TimeoutError:
            raise FetchTimeoutError(f"the POST took longer than {timeout_s:g} s") from None
        kept = httpx.Headers(
            [
                (name, value)
                for name, value in response.headers.multi_items()
                if name.lower() not in ("content-length", "content-encoding", "transfer-encoding")
            ]
        )
        return httpx.Response(
            status_code=response.status_code,
            headers=kept,
            content=bytes(body),
            request=response.request,
            extensions={"http_version": response.extensions.get("http_version", b"HTTP/1.1")},
        )

    # ----------------------------------------------------------------- internals

    async def _open(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        content: bytes | None,
        follow_redirects: bool,
        read_timeout_s: float,
    ) -> httpx.Response:
        """Send a request and return the streaming response of the last hop.

        Redirects are followed only for body-less methods (a body is never replayed to
        a redirect target). Each hop is a new request through the guarded transport,
        so its host is resolved and checked again. The caller must close the response.
        """
        if follow_redirects and method not in _BODYLESS_METHODS:
            raise ValueError("redirects are followed only for GET and HEAD")
        policy = self._policy
        target = _check_url(url)
        timeouts = {
            "connect": policy.connect_timeout_s,
            "read": read_timeout_s,
            "write": read_timeout_s,
            "pool": policy.connect_timeout_s,
        }
        hops = 0
        while True:
            try:
                request = httpx.Request(
                    method,
                    target,
                    headers=_merge_headers({"User-Agent": policy.user_agent}, headers),
                    content=content,
                    extensions={"timeout": timeouts},
                )
                response = await self._transport.handle_async_request(request)
            except httpx.HTTPError as exc:
                raise _fetch_error(exc, target.host) from None
            location = response.headers.get("Location")
            if (
                not follow_redirects
                or response.status_code not in _REDIRECT_STATUSES
                or location is None
            ):
                return response
            await response.aclose()
            if hops >= policy.max_redirects:
                raise FetchError(f"refused to fetch: more than {policy.max_redirects} redirects")
            hops += 1
            try:
                next_url = target.join(location)
            except httpx.InvalidURL:
                raise FetchError(
                    f"refused to fetch: {target.host!r} redirected to an invalid URL"
                ) from None
            target = _check_url(next_url.copy_with(fragment=None))
            logger.debug("following redirect %d to %s", hops, target.host)

    async def _read_image(self, response: httpx.Response) -> tuple[bytes, str]:
        """Stream the body under the byte cap and check its magic bytes early."""
        max_bytes = self._policy.max_bytes
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise UnsupportedMediaError(
                f"the image was sent with Content-Encoding {encoding!r}; expected none"
            )
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
            raise TooLargeError(
                f"the image is {int(declared)} bytes, more than the limit of {max_bytes}"
            )
        body = bytearray()
        mime_type: str | None = None
        try:
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > max_bytes:
                    raise TooLargeError(f"the image is larger than the limit of {max_bytes} bytes")
                if mime_type is None and len(body) >= SNIFF_BYTES:
                    mime_type = self._sniff_or_refuse(body)
        except httpx.HTTPError as exc:
            raise _fetch_error(exc, response.url.host) from None
        if mime_type is None:
            mime_type = self._sniff_or_refuse(body)
        return bytes(body), mime_type

    @staticmethod
    def _sniff_or_refuse(body: bytearray) -> str:
        mime_type = sniff_image_type(bytes(body[:SNIFF_BYTES]))
        if mime_type is None:
            what = "an empty body" if not body else "not a PNG, JPEG or WebP image"
            raise UnsupportedMediaError(f"the URL returned {what}")
        return mime_type


def _merge_headers(base: Mapping[str, str], extra: Mapping[str, str]) -> httpx.Headers:
    """``base`` overridden by ``extra``, names compared case-insensitively."""
    merged = httpx.Headers(base)
    merged.update(extra)
    return merged


def _fetch_error(exc: httpx.HTTPError, host: str) -> FetchError:
    """A user-facing error for a transport failure, without resolver or socket details."""
    if isinstance(exc, httpx.TimeoutException):
        return FetchTimeoutError(f"connecting to or reading from {host!r} timed out")
    if isinstance(exc, httpx.ConnectError):
        return FetchError(f"could not connect to {host!r}")
    return FetchError(f"fetching from {host!r} failed: {type(exc).__name__}")

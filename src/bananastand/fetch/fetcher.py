"""`SafeFetcher`: GET an image or POST a callback under the policy, with its caps.

It sends each request (and each redirect's) through the guarded transport, follows and
checks redirects itself, and reads bodies under the byte and time caps; the image's type
comes from its first bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import httpx

from bananastand.addresses import AllowList
from bananastand.errors import ConfigurationError
from bananastand.fetch.backend import Resolver
from bananastand.fetch.errors import (
    FetchError,
    FetchTimeoutError,
    TooLargeError,
    UnsupportedMediaError,
)
from bananastand.fetch.policy import FetchPolicy, check_url
from bananastand.fetch.transport import GuardedTransport
from bananastand.image_types import SNIFF_BYTES, sniff_image_type

logger = logging.getLogger(__name__)

#: Most bytes of a webhook's answer that `SafeFetcher.post` keeps (the rest is dropped).
POST_RESPONSE_MAX_BYTES: Final = 64 * 1024

_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_BODYLESS_METHODS: Final = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class FetchedImage:
    """An image fetched from a URL, its type decided by magic bytes."""

    data: bytes
    mime_type: str  # image/jpeg, image/png or image/webp
    url: str  # the final URL after redirects


class SafeFetcher:
    """The SSRF-safe outbound HTTP client, shared by every task of a process.

    It holds one connection pool for its lifetime, so repeated fetches from the same
    origin reuse connections; the webhook sender has a fetcher of its own, so that slow
    receivers never hold the connections image inputs need. Close it with `aclose` (or
    ``async with``).
    """

    def __init__(self, policy: FetchPolicy, *, resolver: Resolver | None = None) -> None:
        if policy.max_bytes <= 0:
            raise ConfigurationError("fetch max_bytes must be positive")
        if policy.timeout_s <= 0 or policy.connect_timeout_s <= 0:
            raise ConfigurationError("fetch timeouts must be positive")
        if policy.max_redirects < 0:
            raise ConfigurationError("fetch max_redirects must not be negative")
        self._policy = policy
        self._transport = GuardedTransport(AllowList.parse(policy.allow), resolver=resolver)

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
        target = check_url(url)
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
            target = check_url(next_url.copy_with(fragment=None))
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

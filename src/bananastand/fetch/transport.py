"""httpx's requests and responses over an httpcore pool that opens sockets through
`GuardedBackend`.

httpx's ``AsyncHTTPTransport`` cannot be given a network backend, hence this small copy
of its request/response mapping.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Final

import httpcore
import httpx

from bananastand.addresses import AllowList
from bananastand.fetch.backend import GuardedBackend, Resolver

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


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore pool that uses `GuardedBackend`.

    It never looks at the environment: no proxies. Certificate verification is httpx's
    default (certifi; ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` are honoured so a self-hosted
    deployment can trust its own CA).
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
            network_backend=GuardedBackend(allow, resolver),
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

"""Integration: SafeFetcher against real loopback HTTP servers: the SSRF rules, caps and redirects.

The servers listen on 127.0.0.1, which the fetcher refuses unless the policy's
allow-list admits it: that is itself the first thing under test.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from bananastand.addresses import is_public_address
from bananastand.errors import ConfigurationError, InputError
from bananastand.fetch import (
    POST_RESPONSE_MAX_BYTES,
    BlockedAddressError,
    FetchError,
    FetchPolicy,
    FetchTimeoutError,
    SafeFetcher,
    TooLargeError,
    UnsupportedMediaError,
)

pytestmark = pytest.mark.no_database

T = TypeVar("T")

LOOPBACK = ("127.0.0.0/8",)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _image(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format=fmt)
    return buf.getvalue()


PNG = _image("PNG")
JPEG = _image("JPEG")
WEBP = _image("WEBP")


# --------------------------------------------------------------------------- server


@dataclass
class FakeServer:
    httpd: ThreadingHTTPServer
    port: int
    requests: list[tuple[str, str]] = field(default_factory=list)
    posted: list[bytes] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every handler thread
    fake: FakeServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up on purpose (caps, timeouts) are not errors here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # idle keep-alive connections end on their own
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.fake.lock:
            self.server.fake.connections += 1

    def _send(self, status: int, body: bytes, ctype: str = "image/png", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self._write(body)

    def _write(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return False
        return True

    def _redirect(self, location: str, status: int = 302) -> None:
        self._send(status, b"", "text/plain", Location=location)

    def do_GET(self) -> None:
        fake = self.server.fake
        parts = urlsplit(self.path)
        with fake.lock:
            fake.requests.append(("GET", self.path))
        path = parts.path
        if path == "/png":
            self._send(200, PNG)
        elif path == "/jpeg":
            self._send(200, JPEG, "image/jpeg")
        elif path == "/webp":
            self._send(200, WEBP, "application/octet-stream")
        elif path.startswith("/redirect/"):
            left = int(path.rsplit("/", 1)[1])
            if left == 0:
                self._send(200, PNG)
            else:
                self._redirect(f"/redirect/{left - 1}")
        elif path == "/redirect-to":
            self._redirect(parse_qs(parts.query)["url"][0])
        elif path == "/big-cl":
            size = int(parse_qs(parts.query)["size"][0])
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self._write(PNG[:16] + b"\0" * (size - 16))
        elif path == "/big-chunked":
            # Endless (well, 50 MiB) chunked body: the client must stop reading itself.
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = PNG[:16] + b"\0" * (64 * 1024 - 16)
            for _ in range(800):
                if not self._write(b"%x\r\n%s\r\n" % (len(chunk), chunk)):
                    return
            self._write(b"0\r\n\r\n")
        elif path == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            if not self._write(PNG[:16]):
                return
            for _ in range(984):  # ~10 s in all, unless the client hangs up
                time.sleep(0.01)
                if not self._write(b"\0"):
                    return
        elif path == "/html":
            self._send(200, b"<html><body>not an image</body></html>", "image/png")
        elif path == "/gzip":
            self._send(200, gzip.compress(PNG), "image/png", Content_Encoding="gzip")
        elif path == "/empty":
            self._send(200, b"")
        else:
            self._send(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        fake = self.server.fake
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with fake.lock:
            fake.requests.append(("POST", self.path))
            fake.posted.append(body)
        if self.path == "/hook-moved":
            self._redirect("/png", status=301)
        elif self.path == "/hook-big":
            self._send(200, b"x" * (1024 * 1024), "text/plain")
        else:
            self._send(204, b"", "text/plain")


@pytest.fixture
def server() -> Iterator[FakeServer]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    fake = FakeServer(httpd=httpd, port=httpd.server_address[1])
    httpd.fake = fake
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield fake
    finally:
        httpd.shutdown()
        thread.join()
        httpd.server_close()


async def _fetch(url: str, policy: FetchPolicy) -> Any:
    async with SafeFetcher(policy) as fetcher:
        return await fetcher.fetch_image(url)


# --------------------------------------------------------------------------- addresses

ADDRESS_TABLE = [
    # IPv4 private, loopback, link-local, special
    ("10.0.0.1", False),
    ("172.16.0.1", False),
    ("172.31.255.255", False),
    ("192.168.1.1", False),
    ("127.0.0.1", False),
    ("127.255.255.254", False),
    ("169.254.169.254", False),  # cloud metadata
    ("100.64.0.1", False),  # CGNAT
    ("100.127.255.255", False),
    ("0.0.0.0", False),
    ("0.1.2.3", False),
    ("224.0.0.1", False),  # multicast (ipaddress says is_global)
    ("239.255.255.250", False),
    ("255.255.255.255", False),  # broadcast
    ("240.0.0.1", False),  # reserved
    ("192.0.2.1", False),  # TEST-NET-1
    ("198.51.100.7", False),  # TEST-NET-2
    ("203.0.113.9", False),  # TEST-NET-3
    ("198.18.0.1", False),  # benchmarking
    ("192.0.0.1", False),  # IETF protocol assignments
    # IPv6
    ("::1", False),
    ("::", False),
    ("fe80::1", False),
    ("fe80::1%eth0", False),
    ("fc00::1", False),
    ("fd12:3456::1", False),
    ("fec0::1", False),  # site-local (ipaddress says is_global)
    ("ff02::1", False),
    ("ff0e::1", False),  # global-scope multicast (ipaddress says is_global)
    ("2001:db8::1", False),
    ("3fff::1", False),
    ("100::1", False),
    ("5f00::1", False),
    # IPv4 smuggled inside IPv6
    ("::ffff:127.0.0.1", False),
    ("::ffff:10.0.0.1", False),
    ("::ffff:169.254.169.254", False),
    ("::127.0.0.1", False),  # deprecated IPv4-compatible
    ("::ffff:0:7f00:1", False),  # SIIT IPv4-translated
    ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
    ("2002:a00:1::", False),  # 6to4 of 10.0.0.1
    ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
    ("64:ff9b:1::808:808", False),  # local-use NAT64
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
    ("not-an-ip", False),
    # public
    ("8.8.8.8", True),
    ("1.1.1.1", True),
    ("93.184.215.14", True),
    ("2606:4700::1111", True),
    ("2001:4860:4860::8888", True),
    ("::ffff:8.8.8.8", True),
    ("64:ff9b::808:808", True),  # NAT64 of a public address (DNS64 networks)
    ("2002:808:808::1", True),  # 6to4 of a public address
]


@pytest.mark.parametrize(("address", "public"), ADDRESS_TABLE)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_bad_allow_list_entries_are_configuration_errors() -> None:
    for entry in ("10.0.0.0/33", "", "not a host", "http://x"):
        with pytest.raises(ConfigurationError):
            SafeFetcher(FetchPolicy(allow=(entry,)))


# --------------------------------------------------------------------------- SSRF


def test_loopback_refused_without_allow_list(server: FakeServer) -> None:
    with pytest.raises(BlockedAddressError) as info:
        run(_fetch(server.url("/png"), FetchPolicy()))
    assert isinstance(info.value, InputError)
    assert info.value.fail_code == "400"
    assert server.requests == []


def test_loopback_allowed_by_network(server: FakeServer) -> None:
    image = run(_fetch(server.url("/png"), FetchPolicy(allow=LOOPBACK)))
    assert image.data == PNG
    assert image.mime_type == "image/png"
    assert image.url == server.url("/png")


def test_types_come_from_magic_bytes(server: FakeServer) -> None:
    policy = FetchPolicy(allow=LOOPBACK)
    jpeg = run(_fetch(server.url("/jpeg"), policy))
    webp = run(_fetch(server.url("/webp"), policy))  # served as application/octet-stream
    assert (jpeg.mime_type, jpeg.data) == ("image/jpeg", JPEG)
    assert (webp.mime_type, webp.data) == ("image/webp", WEBP)


def test_localhost_name_refused_without_leaking_the_address(server: FakeServer) -> None:
    with pytest.raises(BlockedAddressError) as info:
        run(_fetch(server.url("/png", host="localhost"), FetchPolicy()))
    assert "localhost" in str(info.value)
    assert "127.0.0.1" not in str(info.value)
    assert "::1" not in str(info.value)


@pytest.mark.parametrize(
    "host", ["2130706433", "0x7f000001", "127.1", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0"]
)
def test_obfuscated_loopback_forms_refused(server: FakeServer, host: str) -> None:
    with pytest.raises(BlockedAddressError):
        run(_fetch(server.url("/png", host=host), FetchPolicy()))
    assert server.requests == []


def test_localhost_allowed_by_name(server: FakeServer) -> None:
    image = run(_fetch(server.url("/png", host="localhost"), FetchPolicy(allow=("localhost",))))
    assert image.data == PNG


def test_redirect_to_unlisted_address_refused(server: FakeServer) -> None:
    """The first hop is allowed by name only; the redirect's IP literal is not."""
    target = server.url("/png", host="127.0.0.2")
    url = server.url(f"/redirect-to?url={target}", host="localhost")
    with pytest.raises(BlockedAddressError):
        run(_fetch(url, FetchPolicy(allow=("localhost",))))
    assert server.requests == [("GET", f"/redirect-to?url={target}")]


def test_redirect_to_metadata_address_refused(server: FakeServer) -> None:
    url = server.url("/redirect-to?url=http://169.254.169.254/latest/meta-data/")
    with pytest.raises(BlockedAddressError):
        run(_fetch(url, FetchPolicy(allow=LOOPBACK)))


def test_redirects_followed_up_to_the_limit(server: FakeServer) -> None:
    policy = FetchPolicy(allow=LOOPBACK, max_redirects=3)
    image = run(_fetch(server.url("/redirect/3"), policy))
    assert image.data == PNG
    assert image.url == server.url("/redirect/0")
    with pytest.raises(FetchError, match="redirects"):
        run(_fetch(server.url("/redirect/4"), policy))


def test_no_redirects_allowed(server: FakeServer) -> None:
    with pytest.raises(FetchError, match="redirects"):
        run(_fetch(server.url("/redirect/1"), FetchPolicy(allow=LOOPBACK, max_redirects=0)))


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://127.0.0.1:70/_x",
        "data:image/png;base64,iVBORw0KGgo=",
        "/relative/path.png",
        "http:///no-host.png",
    ],
)
def test_non_http_urls_refused(url: str) -> None:
    with pytest.raises(FetchError, match="refused"):
        run(_fetch(url, FetchPolicy(allow=LOOPBACK)))


@pytest.mark.parametrize("target", ["file:///etc/passwd", "gopher://127.0.0.1/x"])
def test_redirect_to_non_http_scheme_refused(server: FakeServer, target: str) -> None:
    with pytest.raises(FetchError, match="scheme"):
        run(_fetch(server.url(f"/redirect-to?url={target}"), FetchPolicy(allow=LOOPBACK)))


def test_proxy_environment_is_ignored(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = "http://127.0.0.1:9"
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    image = run(_fetch(server.url("/png"), FetchPolicy(allow=LOOPBACK)))
    assert image.data == PNG


# --------------------------------------------------------------------------- caps


def test_declared_length_over_cap_refused_up_front(server: FakeServer) -> None:
    policy = FetchPolicy(allow=LOOPBACK, max_bytes=10_000)
    with pytest.raises(TooLargeError):
        run(_fetch(server.url("/big-cl?size=50000"), policy))


def test_streamed_body_over_cap_refused(server: FakeServer) -> None:
    policy = FetchPolicy(allow=LOOPBACK, max_bytes=100_000)
    with pytest.raises(TooLargeError):
        run(_fetch(server.url("/big-chunked"), policy))


def test_body_at_cap_accepted(server: FakeServer) -> None:
    policy = FetchPolicy(allow=LOOPBACK, max_bytes=20_000)
    image = run(_fetch(server.url("/big-cl?size=20000"), policy))
    assert len(image.data) == 20_000


def test_slow_body_hits_the_time_cap(server: FakeServer) -> None:
    policy = FetchPolicy(allow=LOOPBACK, timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(FetchTimeoutError):
        run(_fetch(server.url("/slow"), policy))
    assert time.monotonic() - started < 5  # the server would trickle for ~10 s


# --------------------------------------------------------------------------- content


def test_wrong_magic_bytes_refused(server: FakeServer) -> None:
    with pytest.raises(UnsupportedMediaError):
        run(_fetch(server.url("/html"), FetchPolicy(allow=LOOPBACK)))


def test_empty_body_refused(server: FakeServer) -> None:
    with pytest.raises(UnsupportedMediaError, match="empty"):
        run(_fetch(server.url("/empty"), FetchPolicy(allow=LOOPBACK)))


def test_content_encoding_refused(server: FakeServer) -> None:
    with pytest.raises(UnsupportedMediaError, match="gzip"):
        run(_fetch(server.url("/gzip"), FetchPolicy(allow=LOOPBACK)))


def test_not_found_names_the_status(server: FakeServer) -> None:
    with pytest.raises(FetchError, match="404") as info:
        run(_fetch(server.url("/missing"), FetchPolicy(allow=LOOPBACK)))
    assert type(info.value) is FetchError


def test_connection_refused_is_a_fetch_error(server: FakeServer) -> None:
    with pytest.raises(FetchError, match="could not connect"):
        run(_fetch("http://127.0.0.1:9/png", FetchPolicy(allow=LOOPBACK)))


def test_connections_are_pooled(server: FakeServer) -> None:
    async def three() -> None:
        async with SafeFetcher(FetchPolicy(allow=LOOPBACK)) as fetcher:
            for _ in range(3):
                assert (await fetcher.fetch_image(server.url("/png"))).data == PNG

    run(three())
    assert server.connections == 1


# --------------------------------------------------------------------------- post


async def _post(url: str, policy: FetchPolicy, content: bytes = b"{}") -> Any:
    async with SafeFetcher(policy) as fetcher:
        return await fetcher.post(
            url, content=content, headers={"Content-Type": "application/json"}, timeout_s=5
        )


def test_post_returns_redirect_without_following(server: FakeServer) -> None:
    response = run(_post(server.url("/hook-moved"), FetchPolicy(allow=LOOPBACK), b'{"a":1}'))
    assert response.status_code == 301
    assert response.headers["location"] == "/png"
    assert server.requests == [("POST", "/hook-moved")]
    assert server.posted == [b'{"a":1}']


def test_post_reads_a_capped_body(server: FakeServer) -> None:
    response = run(_post(server.url("/hook-big"), FetchPolicy(allow=LOOPBACK)))
    assert response.status_code == 200
    assert response.content == b"x" * POST_RESPONSE_MAX_BYTES


def test_post_to_loopback_refused_without_allow_list(server: FakeServer) -> None:
    with pytest.raises(BlockedAddressError):
        run(_post(server.url("/hook"), FetchPolicy()))
    assert server.requests == []

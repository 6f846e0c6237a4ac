"""Acceptance: a real server whose live keys run on the Google provider, pointed at the fake Gemini
server; input images from loopback servers reached through an injected resolver (no DNS).
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from bananastand.app import close_runtime, open_runtime
from bananastand.fake_gemini import FakeGemini, Reply
from bananastand.providers.registry import ProviderRegistry, choose_live, describe_live
from bananastand.settings import LiveProvider, Settings
from bananastand.store.tables import tasks
from conftest import Server, database_settings, prompt_body, rows_of
from waiting import wait_for


def _png(width: int = 60, height: int = 40) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


# --------------------------------------------------------------------------- loopback hosts


@dataclass
class Origin:
    """A loopback HTTP server that serves images, redirects, and counts every hit."""

    port: int = 0
    hits: list[str] = field(default_factory=list)
    redirects: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def origin() -> Iterator[Origin]:
    state = Origin()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            state.hits.append(self.path)
            if self.path in state.redirects:
                self.send_response(302)
                self.send_header("Location", state.redirects[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path == "/missing.png":
                self.send_error(404)
                return
            if self.path == "/endless.png":
                self.send_response(200)
                self.end_headers()  # no length: streams until cut off
                self.wfile.write(_png())
                try:
                    while True:
                        self.wfile.write(b"\0" * 65536)
                except OSError:
                    return
            body = _png(64, 32) if self.path != "/text.png" else b"hello, not an image"
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


#: Names the injected resolver knows; nothing else resolves (and no real DNS is asked).
HOSTS: dict[str, list[str]] = {
    "images.test": ["127.0.0.1"],  # allow-listed by name: our legit image host
    "redirector.test": ["127.0.0.1"],  # allow-listed by name: redirects somewhere bad
    "localhost": ["127.0.0.1", "::1"],
    "evil.example": ["127.0.0.1"],
    "metadata.example": ["169.254.169.254"],
    "lan.example": ["192.168.1.20"],
    "ula.example": ["fd00::5"],
    "mixed.example": ["93.184.216.34", "10.1.2.3"],
    "cgnat.example": ["100.64.3.4"],
    "mapped.example": ["::ffff:127.0.0.1"],
}


async def resolver(host: str, port: int) -> list[str]:
    found = HOSTS.get(host.lower().rstrip("."))
    if found is None:
        raise socket.gaierror(socket.EAI_NONAME, "unknown name")
    return found


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        yield server


@pytest.fixture
def live(start_server: Callable[..., Server], fake: FakeGemini) -> Server:
    return start_server(
        billing=False,
        live_provider="gemini",
        GOOGLE_API_KEY=fake.api_key,
        GOOGLE_GEMINI_BASE_URL=fake.base_url,
        allow_private_networks=["images.test", "redirector.test"],
        upstream_backoff_seconds=0.01,
        resolver=resolver,
    )


def _run(server: Server, key: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = server.create(key, body)
    assert answer["code"] == 200, answer
    return server.wait(key, answer["data"]["taskId"])


def _result(server: Server, record: dict[str, Any]) -> bytes:
    url = json.loads(record["resultJson"])["resultUrls"][0]
    return httpx.get(url, timeout=10).content


# --------------------------------------------------------------------------- end to end


def test_a_live_key_makes_a_real_image_through_google(
    live: Server, fake: FakeGemini, origin: Origin
) -> None:
    key = live.key(test=False)
    inputs = [f"http://images.test:{origin.port}/ref{i}.png" for i in range(3)]
    body = prompt_body(
        "a banana", image_input=inputs, aspect_ratio="4:3", resolution="2K", output_format="jpg"
    )
    record = _run(live, key, body)
    assert record["state"] == "success", record
    with Image.open(io.BytesIO(_result(live, record))) as image:
        assert image.format == "JPEG"
        assert image.size == (2400, 1792)
    (seen,) = fake.requests
    assert seen.model == "gemini-3-pro-image"
    assert seen.image_config == {"aspectRatio": "4:3", "imageSize": "2K"}
    assert len(seen.images) == 3
    assert sorted(origin.hits) == ["/ref0.png", "/ref1.png", "/ref2.png"]


def test_an_upstream_failure_becomes_the_tasks_failure(live: Server, fake: FakeGemini) -> None:
    fake.script(Reply(status=400, message="Request contains an invalid argument."))
    record = _run(live, live.key(test=False), prompt_body())
    assert record["failCode"] == "400"
    assert "Request contains an invalid argument." in record["failMsg"]
    fake.script(Reply(finish_reason="IMAGE_SAFETY"))
    record = _run(live, live.key(test=False), prompt_body())
    assert record["failCode"] == "403"
    assert "IMAGE_SAFETY" in record["failMsg"]


def test_model_rules_and_names_of_the_other_models(live: Server, fake: FakeGemini) -> None:
    key = live.key(test=False)
    body = {"model": "google/nano-banana", "input": {"prompt": "x", "image_size": "9:16"}}
    assert _run(live, key, body)["state"] == "success"
    assert fake.requests[-1].model == "gemini-2.5-flash-image"
    assert fake.requests[-1].image_config == {"aspectRatio": "9:16"}

    body = {"model": "nano-banana-2", "input": {"prompt": "x"}}
    record = _run(live, key, body)
    assert fake.requests[-1].model == "gemini-3.1-flash-image-preview"
    assert fake.requests[-1].image_config == {"imageSize": "1K"}  # default auto: left out
    assert json.loads(record["resultJson"])["resultUrls"][0].endswith(".jpg")  # its default

    # Nano Banana 2's extreme ratios go upstream as they are.
    tall = {"model": "nano-banana-2", "input": {"prompt": "x", "aspect_ratio": "1:8"}}
    assert _run(live, key, tall)["state"] == "success"
    assert fake.requests[-1].image_config == {"aspectRatio": "1:8", "imageSize": "1K"}

    refused = {
        "nano-banana-pro 1:4": (prompt_body(aspect_ratio="1:4"), "input.aspect_ratio"),
        "google/nano-banana 8:1": (
            {"model": "google/nano-banana", "input": {"prompt": "x", "image_size": "8:1"}},
            "input.image_size",
        ),
        "google/nano-banana 2K": (
            {"model": "google/nano-banana", "input": {"prompt": "x", "resolution": "2K"}},
            "input.resolution",
        ),
        "google/nano-banana images": (
            {
                "model": "google/nano-banana",
                "input": {"prompt": "x", "image_input": ["https://example.com/a.png"]},
            },
            "input.image_input",
        ),
        "google/nano-banana long prompt": (
            {"model": "google/nano-banana", "input": {"prompt": "x" * 5001}},
            "input.prompt",
        ),
        "nano-banana-2 webp": (
            {"model": "nano-banana-2", "input": {"prompt": "x", "output_format": "webp"}},
            "input.output_format",
        ),
        "nano-banana-pro 9 images": (
            prompt_body(image_input=[f"https://example.com/{i}.png" for i in range(9)]),
            "input.image_input",
        ),
    }
    for name, (body, field_name) in refused.items():
        answer = live.create(key, body)
        assert answer["code"] == 422, name
        assert answer["msg"].startswith(field_name), (name, answer["msg"])
    images = [f"https://example.com/{i}.png" for i in range(14)]
    many = {"model": "nano-banana-2", "input": {"prompt": "x", "image_input": images}}
    assert live.create(key, many)["code"] == 200


def test_a_burst_queues_for_the_upstream_slot(
    start_server: Callable[..., Server], fake: FakeGemini
) -> None:
    server = start_server(
        billing=False,
        live_provider="gemini",
        GOOGLE_API_KEY=fake.api_key,
        GOOGLE_GEMINI_BASE_URL=fake.base_url,
        upstream_concurrency=1,
    )
    fake.script(Reply(delay_s=1.5))
    key = server.key(test=False)
    first = server.create(key, prompt_body("one"))["data"]["taskId"]
    wait_for(lambda: fake.requests, what="the first call reached Google", interval=0.02)
    second = server.create(key, prompt_body("two"))["data"]["taskId"]
    # The first call holds the only slot for 1.5 s: the second is claimed but waits.
    wait_for(
        lambda: server.record(key, second)["data"]["state"],
        lambda state: state != "waiting",
        what="the second task claimed",
        interval=0.02,
    )
    assert server.record(key, second)["data"]["state"] == "queuing"
    assert server.record(key, first)["data"]["state"] == "generating"
    assert len(fake.requests) == 1
    assert server.wait(key, first)["state"] == "success"
    assert server.wait(key, second)["state"] == "success"


def test_the_provider_choice(tmp_path: Any) -> None:
    assert choose_live(Settings()) is None
    assert choose_live(Settings(GEMINI_API_KEY="k")) is LiveProvider.GEMINI
    vertex = Settings(
        GEMINI_API_KEY="k", GOOGLE_GENAI_USE_VERTEXAI="true", GOOGLE_CLOUD_PROJECT="p"
    )
    assert choose_live(vertex) is LiveProvider.VERTEX
    assert "location global" in (describe_live(vertex) or "")
    assert choose_live(Settings(live_provider="gemini")) is None  # no key: 505
    assert choose_live(Settings(live_provider="sandbox")) is LiveProvider.SANDBOX


def test_an_api_without_a_worker_settles_the_provider_without_building_its_client(
    start_server: Callable[..., Server], fake: FakeGemini, tmp_path: Path
) -> None:
    google = {"live_provider": "gemini", "GOOGLE_API_KEY": fake.api_key}
    api = start_server(run_worker=False, billing=False, **google)
    answer = api.create(api.key(test=False), prompt_body())
    assert answer["code"] == 200, answer
    with rows_of(api.data_dir) as connection:
        provider = connection.execute(
            select(tasks.c.provider).where(tasks.c.id == answer["data"]["taskId"])
        ).scalar_one()
    assert provider == "gemini"

    async def providers_built(*, run_worker: bool) -> ProviderRegistry | None:
        settings = Settings(data_dir=tmp_path, **google, **database_settings(tmp_path))
        runtime = await open_runtime(settings, run_worker=run_worker)
        await close_runtime(runtime)
        return runtime.providers

    assert asyncio.run(providers_built(run_worker=False)) is None
    assert asyncio.run(providers_built(run_worker=True)) is not None


def test_no_provider_answers_505(start_server: Callable[..., Server]) -> None:
    server = start_server(live_provider="gemini", billing=False)
    answer = server.create(server.key(test=False), prompt_body())
    assert answer["code"] == 505
    assert answer["msg"] == "no provider configured for nano-banana-pro"


# --------------------------------------------------------------------------- inputs


def test_a_bad_input_fails_the_task_naming_it(live: Server, origin: Origin) -> None:
    key = live.key(test=False)
    good = f"http://images.test:{origin.port}/ok.png"
    cases = {
        f"http://images.test:{origin.port}/missing.png": "HTTP 404",
        f"http://images.test:{origin.port}/text.png": "not a PNG, JPEG or WebP",
        "http://nowhere.test/a.png": "could not connect",
    }
    for bad, why in cases.items():
        record = _run(live, key, prompt_body(image_input=[good, good, bad]))
        assert record["failCode"] == "400"
        assert record["failMsg"].startswith("image_input[2]: "), record["failMsg"]
        assert why in record["failMsg"]


def test_an_endless_input_is_cut_off(start_server: Callable[..., Server], origin: Origin) -> None:
    server = start_server(
        billing=False,
        live_provider="sandbox",
        allow_private_networks=["images.test"],
        max_input_image_bytes=31 * 1024 * 1024,
        resolver=resolver,
    )
    key = server.key(test=False)
    record = _run(
        server, key, prompt_body(image_input=[f"http://images.test:{origin.port}/endless.png"])
    )
    assert record["failCode"] == "400"
    assert "larger than the limit of 32505856 bytes" in record["failMsg"]


def test_our_own_result_urls_are_read_from_storage(start_server: Callable[..., Server]) -> None:
    server = start_server()  # loopback is not allow-listed: HTTP to ourselves would be refused
    key = server.key()
    first = _run(server, key, prompt_body("first"))
    url = json.loads(first["resultJson"])["resultUrls"][0]
    assert url.startswith(server.base_url + "/files/")
    second = _run(server, key, prompt_body("second", image_input=[url]))
    assert second["state"] == "success", second
    forged = server.base_url + "/files/4102444800/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/results/x.png"
    missing = _run(server, key, prompt_body("third", image_input=[forged]))
    assert missing["failCode"] == "400"
    assert missing["failMsg"] == ("image_input[0]: the link is expired or not one this server made")


# --------------------------------------------------------------------------- SSRF


def _literal_urls(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/a.png",
        f"http://127.1:{port}/a.png",
        f"http://0x7f000001:{port}/a.png",
        f"http://2130706433:{port}/a.png",
        f"http://0177.0.0.1:{port}/a.png",
        f"http://[::1]:{port}/a.png",
        f"http://[::ffff:127.0.0.1]:{port}/a.png",
        f"http://0.0.0.0:{port}/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/a.png",
        "http://172.16.0.1/a.png",
        "http://172.31.255.254/a.png",
        "http://192.168.1.1/a.png",
        "http://100.64.0.1/a.png",
        "http://[fd00::1]/a.png",
        "http://[fe80::1]/a.png",
        "http://[2002:7f00:1::]/a.png",  # 6to4 of 127.0.0.1
        "http://[64:ff9b::7f00:1]/a.png",  # NAT64 of 127.0.0.1
        "http://[::]/a.png",
        "http://224.0.0.1/a.png",
        f"http://user:pass@127.0.0.1:{port}/a.png",  # credentials in the URL
        f"http://images.test@127.0.0.1:{port}/a.png",  # "allowed host" as userinfo
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        f"gopher://127.0.0.1:{port}/_a",
    ]


def _named_urls(port: int) -> list[str]:
    return [
        f"http://localhost:{port}/a.png",
        f"http://localhost.:{port}/a.png",
        f"http://evil.example:{port}/a.png",
        f"http://EVIL.example.:{port}/a.png",
        "http://metadata.example/latest/meta-data/",
        "http://lan.example/a.png",
        "http://ula.example/a.png",
        "http://mixed.example/a.png",
        "http://cgnat.example/a.png",
        f"http://mapped.example:{port}/a.png",
        f"http://user:pw@evil.example:{port}/a.png",
        f"http://redirector.test:{port}/to-literal",
        f"http://redirector.test:{port}/to-name",
    ]


def test_hostile_image_urls_are_refused_and_nothing_is_fetched(
    start_server: Callable[..., Server], origin: Origin
) -> None:
    # The origin plays every internal host; redirector.test is allow-listed by name and
    # is the same origin, so its hits on the redirect paths are expected, nothing else.
    origin.redirects = {
        "/to-literal": f"http://127.0.0.1:{origin.port}/secret.png",
        "/to-name": f"http://evil.example:{origin.port}/secret.png",
    }
    server = start_server(
        billing=False,
        live_provider="sandbox",
        allow_private_networks=["redirector.test"],
        resolver=resolver,
    )
    key = server.key(test=False)
    literal = _literal_urls(origin.port)
    named = _named_urls(origin.port)
    assert len(literal) + len(named) >= 25
    for url in literal:
        answer = server.create(key, prompt_body(image_input=[url]))
        assert answer["code"] == 422, (url, answer)
        assert answer["msg"].startswith("input.image_input"), (url, answer["msg"])
    for url in named:
        record = _run(server, key, prompt_body(image_input=[url]))
        assert record["failCode"] == "400", (url, record)
        assert record["failMsg"].startswith("image_input[0]: refused"), (url, record["failMsg"])
        # The failMsg names what the client gave, never what the name resolved to.
        for address in ("169.254.169.254", "192.168.1.20", "fd00::5", "10.1.2.3"):
            assert address not in record["failMsg"]
    assert sorted(origin.hits) == ["/to-literal", "/to-name"]

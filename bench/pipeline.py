"""The worker's generation path against a minimal straight-line script, in one run.

Per task, both sides: fetch 8 input images from a loopback HTTP server, call the fake
Gemini server (zero delay) through the real google-genai SDK asking for a 4K image,
convert the PNG answer to JPEG, store the file. "ours" runs bananastand's components
exactly as the worker chains them (InputLoader over the SSRF-safe SafeFetcher with its
checks, the upstream limiter, GoogleProvider with input fitting and answer parsing,
imaging.to_output_format, LocalStorage.put with fsync); "baseline" is the least code that
does the same work (httpx gather, one SDK call, Pillow, write + fsync). The database
writes around a task are measured by bench/api.py, not here.

    .venv/bin/python bench/pipeline.py [--tasks 12]

Prints the median per-task time of each and ours/baseline (aim: <= 1.2).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from google import genai
from google.genai import types
from PIL import Image

from bananastand import imaging
from bananastand.contract import AspectRatio, OutputFormat, Resolution
from bananastand.fake_gemini import FakeGemini
from bananastand.fetch import FetchPolicy, SafeFetcher
from bananastand.inputs import InputLoader
from bananastand.providers.base import DetachedAttempt, GenerationRequest
from bananastand.providers.google import GoogleProvider, UpstreamRetryPolicy
from bananastand.providers.local_limiter import LocalLimiter
from bananastand.settings import Settings
from bananastand.storage.local import LocalStorage

INPUTS = 8


def _input_image(seed: int) -> bytes:
    """A 640x640 photo-like PNG (~1.2 MB; incompressible noise, deterministic)."""
    raw = bytearray()
    block = seed.to_bytes(4, "big")
    while len(raw) < 640 * 640 * 3:
        block = hashlib.sha512(block).digest()
        raw += block
    out = io.BytesIO()
    Image.frombytes("RGB", (640, 640), bytes(raw[: 640 * 640 * 3])).save(out, format="PNG")
    return out.getvalue()


def _serve_images(images: list[bytes]) -> tuple[ThreadingHTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = images[int(self.path.strip("/").split(".")[0])]
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    # The default listen backlog (5) drops SYNs of 8 simultaneous connects: 1 s stalls.
    ThreadingHTTPServer.request_queue_size = 64
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, httpd.server_address[1]


class Ours:
    """bananastand's parts, made once per process as the worker has them."""

    def __init__(self, fake: FakeGemini, root: Path) -> None:
        settings = Settings()
        self.fetcher = SafeFetcher(FetchPolicy(allow=("127.0.0.1/32",)))
        self.storage = LocalStorage(root / "ours")
        self.loader = InputLoader(
            self.fetcher,
            self.storage,
            public_url="http://127.0.0.1:1",
            concurrency=settings.fetch_concurrency,
            max_bytes=settings.max_input_image_bytes,
            max_pixels=settings.max_input_image_pixels,
        )
        self.provider = GoogleProvider.gemini(
            fake.api_key,
            settings.models,
            base_url=fake.base_url,
            retry=UpstreamRetryPolicy(),
            limiter=LocalLimiter(concurrency=8),
        )

    async def task(self, urls: list[str], i: int) -> float:
        started = time.perf_counter()
        images = await self.loader.load(urls)
        async with self.provider.limiter.slot():
            image = await self.provider.generate(
                GenerationRequest(
                    model="nano-banana-pro",
                    prompt="a banana",
                    images=images,
                    aspect_ratio=AspectRatio.R1_1,
                    resolution=Resolution.R4K,
                    output_format=OutputFormat.JPG,
                ),
                DetachedAttempt(),
            )
        data = await asyncio.to_thread(imaging.to_output_format, image.data, OutputFormat.JPG)
        await self.storage.put(f"results/t{i}/r.jpg", data, "image/jpeg")
        return time.perf_counter() - started

    async def aclose(self) -> None:
        await self.provider.aclose()
        await self.fetcher.aclose()


def _to_jpeg(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=95, subsampling=0)
        return out.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class Baseline:
    """The least code doing the same work, with its clients made once too."""

    def __init__(self, fake: FakeGemini, root: Path) -> None:
        options = types.HttpOptions(base_url=fake.base_url)
        self.client = genai.Client(api_key=fake.api_key, http_options=options)
        self.http = httpx.AsyncClient()
        self.root = root

    async def task(self, urls: list[str], i: int) -> float:
        started = time.perf_counter()
        bodies = await asyncio.gather(*(self.http.get(url) for url in urls))
        parts: list[Any] = ["a banana"]
        parts += [types.Part.from_bytes(data=r.content, mime_type="image/png") for r in bodies]
        response = await self.client.aio.models.generate_content(
            model="gemini-3-pro-image",
            contents=parts,
            config=types.GenerateContentConfig(
                response_modalities=["TEXT", "IMAGE"],
                image_config=types.ImageConfig(aspect_ratio="1:1", image_size="4K"),
            ),
        )
        assert response.candidates
        assert response.candidates[0].content
        image = [
            p.inline_data.data
            for p in response.candidates[0].content.parts or []
            if p.inline_data and p.inline_data.data and not p.thought
        ][-1]
        data = await asyncio.to_thread(_to_jpeg, image)
        await asyncio.to_thread(_write, self.root / "base" / f"t{i}.jpg", data)
        return time.perf_counter() - started

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.client.aio.aclose()


async def main(n: int) -> None:
    images = [_input_image(i) for i in range(INPUTS)]
    httpd, port = _serve_images(images)
    urls = [f"http://127.0.0.1:{port}/{i}.png" for i in range(INPUTS)]
    with FakeGemini() as fake, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ours, base = Ours(fake, root), Baseline(fake, root)
        for i in range(2):  # warm up both (caches, connection pools)
            await ours.task(urls, -1 - i)
            await base.task(urls, -1 - i)
        ours_t: list[float] = []
        base_t: list[float] = []
        for i in range(n):  # interleaved, so drift hits both alike
            ours_t.append(await ours.task(urls, i))
            base_t.append(await base.task(urls, i))
        await ours.aclose()
        await base.aclose()
    httpd.shutdown()
    ours_ms = statistics.median(ours_t) * 1000
    base_ms = statistics.median(base_t) * 1000
    size = sum(map(len, images)) / 1e6
    print(f"per task: {INPUTS} inputs ({size:.1f} MB) fetched, 4K 4096x4096 PNG -> JPEG, stored")
    print(f"ours      median {ours_ms:8.1f} ms  (n={n})")
    print(f"baseline  median {base_ms:8.1f} ms  (n={n})")
    print(f"ours/baseline {ours_ms / base_ms:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=12)
    asyncio.run(main(parser.parse_args().tasks))

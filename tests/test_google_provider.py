"""Integration: GoogleProvider through the real google-genai SDK against the fake Gemini REST
server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from bananastand import imaging
from bananastand.contract import AspectRatio, Resolution, output_size
from bananastand.errors import InputError, SafetyBlocked, TaskFailure, UpstreamError
from bananastand.fake_gemini import FakeGemini, Reply
from bananastand.providers.base import DetachedAttempt, GenerationRequest, InputImage
from bananastand.providers.google import (
    GEMINI_LIMITS,
    GoogleProvider,
    InlineLimits,
    UpstreamRetryPolicy,
)
from bananastand.providers.local_limiter import LocalLimiter
from bananastand.providers.sandbox import SandboxProvider
from bananastand.settings import Settings

pytestmark = pytest.mark.no_database


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        yield server


def _provider(
    fake: FakeGemini,
    *,
    limits: InlineLimits = GEMINI_LIMITS,
    **retry: Any,
) -> GoogleProvider:
    policy = UpstreamRetryPolicy(**{"timeout_s": 30.0, "backoff_s": 0.01, **retry})
    provider = GoogleProvider.gemini(
        fake.api_key,
        Settings().models,
        base_url=fake.base_url,
        retry=policy,
        limiter=LocalLimiter(),
    )
    if limits is not GEMINI_LIMITS:
        provider._limits = limits
    return provider


def _generate(provider: GoogleProvider, request: GenerationRequest) -> Any:
    async def run() -> Any:
        try:
            return await provider.generate(request, DetachedAttempt())
        finally:
            await provider.aclose()

    return asyncio.run(run())


def _fail(provider: GoogleProvider, request: GenerationRequest) -> TaskFailure:
    with pytest.raises(TaskFailure) as caught:
        _generate(provider, request)
    return caught.value


def _png(width: int, height: int, *, noise: bool = False) -> bytes:
    out = io.BytesIO()
    if noise:
        image = Image.frombytes("RGB", (width, height), _noise(width * height * 3))
    else:
        image = Image.new("RGB", (width, height), (20, 120, 200))
    image.save(out, format="PNG")
    return out.getvalue()


def _noise(n: int) -> bytes:
    """Deterministic incompressible bytes (a hash chain; no randomness in tests)."""
    out = bytearray()
    block = b"bananastand"
    while len(out) < n:
        block = hashlib.sha512(block).digest()
        out += block
    return bytes(out[:n])


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


REQUEST = GenerationRequest(model="nano-banana-pro", prompt="a banana in sunglasses")


# --------------------------------------------------------------------------- success


@pytest.mark.parametrize("resolution", list(Resolution))
def test_success_at_every_resolution(fake: FakeGemini, resolution: Resolution) -> None:
    request = GenerationRequest(
        model="nano-banana-pro",
        prompt="a banana",
        aspect_ratio=AspectRatio.R16_9,
        resolution=resolution,
    )
    image = _generate(_provider(fake), request)
    assert _size(image.data) == output_size(AspectRatio.R16_9, resolution)
    assert image.mime_type == "image/png"
    (seen,) = fake.requests
    assert seen.model == "gemini-3-pro-image"
    assert seen.api_key == fake.api_key
    assert seen.image_config == {"aspectRatio": "16:9", "imageSize": resolution.value}
    assert seen.body["generationConfig"]["responseModalities"] == ["TEXT", "IMAGE"]
    assert seen.parts[0] == {"text": "a banana"}
    assert image.usage["total_tokens"] == 1332
    assert image.usage["output_tokens"] == 1120
    assert image.usage["attempts"] == 1
    assert isinstance(image.usage["upstream_ms"], int)


def test_a_fixed_answer_size_overrides_the_requested_one(fake: FakeGemini) -> None:
    fake.answer_size = (64, 64)
    request = GenerationRequest(
        model="nano-banana-pro", prompt="a banana", resolution=Resolution.R4K
    )
    image = _generate(_provider(fake), request)
    assert _size(image.data) == (64, 64)
    assert fake.requests[0].image_config["imageSize"] == "4K"


def test_more_than_a_hundred_calls_are_in_flight_at_once(fake: FakeGemini) -> None:
    """The SDK's own connection pool held 100: the 101st call waited inside its slot."""
    calls = 120
    fake.delay_s = 300.0  # every call is still held when the last one arrives
    provider = _provider(fake, timeout_s=300.0)  # no call gives up and comes again

    async def run() -> int:
        pending = [
            asyncio.create_task(provider.generate(REQUEST, DetachedAttempt())) for _ in range(calls)
        ]
        try:
            async with asyncio.timeout(60):  # a guard against hanging, not a measure
                while len(fake.requests) < calls:
                    await asyncio.sleep(0.05)
            return len(fake.requests)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await provider.aclose()

    assert asyncio.run(run()) == calls


def test_auto_aspect_ratio_is_left_out_and_inputs_go_inline(fake: FakeGemini) -> None:
    wide = _png(400, 200)
    jpeg = io.BytesIO()
    Image.new("RGB", (50, 50), (1, 2, 3)).save(jpeg, format="JPEG")
    request = GenerationRequest(
        model="nano-banana-pro",
        prompt="combine these",
        images=[InputImage(wide, "image/png"), InputImage(jpeg.getvalue(), "image/jpeg")],
        aspect_ratio=AspectRatio.AUTO,
        resolution=Resolution.R2K,
    )
    image = _generate(_provider(fake), request)
    (seen,) = fake.requests
    assert "aspectRatio" not in seen.image_config
    assert seen.image_config["imageSize"] == "2K"
    mimes = [p["inlineData"]["mimeType"] for p in seen.parts if "inlineData" in p]
    assert mimes == ["image/png", "image/jpeg"]
    assert seen.images == [wide, jpeg.getvalue()]
    # The fake follows the first input's shape, as Google does: 2:1 is nearest 16:9.
    assert _size(image.data) == output_size(AspectRatio.R16_9, Resolution.R2K)


def _photo(width: int, height: int, *, exif_orientation: int = 0) -> bytes:
    out = io.BytesIO()
    exif = Image.Exif()
    if exif_orientation:
        exif[0x0112] = exif_orientation
    Image.new("RGB", (width, height), (200, 60, 40)).save(out, format="JPEG", exif=exif)
    return out.getvalue()


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (InputImage(_png(600, 300), "image/png"), AspectRatio.R16_9),  # 2:1: 16:9 is nearer
        (InputImage(_photo(300, 600), "image/jpeg"), AspectRatio.R9_16),
        # Stored 300x600, tagged "rotate 90": shown (and seen) as 600x300.
        (InputImage(_photo(300, 600, exif_orientation=6), "image/jpeg"), AspectRatio.R16_9),
        (InputImage(_png(1000, 990), "image/png"), AspectRatio.R1_1),
        (InputImage(_png(1000, 1240), "image/png"), AspectRatio.R4_5),
        (InputImage(_png(2400, 1000), "image/png"), AspectRatio.R21_9),
    ],
)
def test_auto_follows_the_first_input_alike_in_the_fake_and_the_sandbox(
    fake: FakeGemini, first: InputImage, expected: AspectRatio
) -> None:
    """Both stand in for Nano Banana Pro: given the same input, each answers the size
    Google's ``auto`` would, and the same one."""
    request = GenerationRequest(
        model="nano-banana-pro",
        prompt="follow the first image",
        images=[first, InputImage(_png(300, 600), "image/png")],
        aspect_ratio=AspectRatio.AUTO,
    )

    async def from_the_sandbox() -> Any:
        sandbox = SandboxProvider(cache_size=0)
        try:
            return await sandbox.generate(request, DetachedAttempt())
        finally:
            await sandbox.aclose()

    drawn = asyncio.run(from_the_sandbox())
    answered = _generate(_provider(fake), request)
    assert drawn.usage["aspect_ratio"] == expected.value
    assert _size(drawn.data) == _size(answered.data) == output_size(expected, Resolution.R1K)


def test_the_last_non_thought_image_is_taken(fake: FakeGemini) -> None:
    image = _generate(_provider(fake), REQUEST)
    # The fake sends a 64x64 thought draft before the final image.
    assert _size(image.data) == (1024, 1024)


def test_a_fixed_size_model_gets_no_image_size(fake: FakeGemini) -> None:
    request = GenerationRequest(
        model="google/nano-banana", prompt="x", aspect_ratio=AspectRatio.R3_4
    )
    image = _generate(_provider(fake), request)
    (seen,) = fake.requests
    assert seen.model == "gemini-2.5-flash-image"
    assert seen.image_config == {"aspectRatio": "3:4"}
    assert _size(image.data) == (896, 1200)


# --------------------------------------------------------------------------- errors


def test_429_is_retried_then_succeeds(fake: FakeGemini) -> None:
    fake.script(Reply(status=429), Reply(status=503), Reply(status=504))
    image = _generate(_provider(fake), REQUEST)
    assert image.usage["attempts"] == 4
    assert len(fake.requests) == 4


def test_repeated_500s_fail_with_500_after_the_attempts(fake: FakeGemini) -> None:
    fake.script(*[Reply(status=500, message="boom")] * 5)
    failure = _fail(_provider(fake, max_attempts=3), REQUEST)
    assert isinstance(failure, UpstreamError)
    assert failure.fail_code == "500"
    assert "500 INTERNAL: boom" in failure.message
    assert "gave up after 3 attempt(s)" in failure.message
    assert len(fake.requests) == 3


def test_the_retry_budget_bounds_the_retries(fake: FakeGemini) -> None:
    fake.script(*[Reply(status=503)] * 5)
    failure = _fail(_provider(fake, budget_s=0.0, backoff_s=5.0), REQUEST)
    assert failure.fail_code == "500"
    assert "gave up after 1 attempt(s)" in failure.message
    assert len(fake.requests) == 1


def test_400_fails_at_once_with_googles_message(fake: FakeGemini) -> None:
    fake.script(Reply(status=400, message="Unable to process input image."))
    failure = _fail(_provider(fake), REQUEST)
    assert isinstance(failure, InputError)
    assert failure.fail_code == "400"
    assert "Unable to process input image." in failure.message
    assert "INVALID_ARGUMENT" in failure.message
    assert len(fake.requests) == 1


def test_a_bad_api_key_is_not_retried(fake: FakeGemini) -> None:
    fake.script(Reply(status=403, message="permission denied"))
    failure = _fail(_provider(fake), REQUEST)
    assert failure.fail_code == "500"
    assert "credentials" in failure.message
    assert len(fake.requests) == 1


def test_a_slow_upstream_times_out_with_504(fake: FakeGemini) -> None:
    fake.script(Reply(delay_s=3), Reply(delay_s=3))
    failure = _fail(_provider(fake, timeout_s=0.3, max_attempts=2), REQUEST)
    assert failure.fail_code == "504"
    assert "did not answer within 0.3 s" in failure.message
    assert "gave up after 2 attempt(s)" in failure.message
    assert len(fake.requests) == 2


def test_a_timeout_then_success_succeeds(fake: FakeGemini) -> None:
    fake.script(Reply(delay_s=3))
    image = _generate(_provider(fake, timeout_s=0.5, max_attempts=2), REQUEST)
    assert image.usage["attempts"] == 2


def test_a_connection_dropped_mid_answer_is_retried_then_fails_500() -> None:
    """The upstream (or a proxy in front of it) closes the connection halfway through its
    answer: a transport error of the SDK's HTTP client, transient, retried, then a 500
    that says what happened. (A connection closed before any answer the SDK retries by
    itself first, after seconds of its own backoff; this one it hands over at once.)"""
    listener = socket.create_server(("127.0.0.1", 0))
    dropped: list[int] = []

    def drop_every_connection() -> None:
        with contextlib.suppress(OSError):  # the listener closed: the test is over
            while True:
                connection, _ = listener.accept()
                with connection:
                    connection.recv(65536)
                    connection.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b'Content-Length: 5000\r\n\r\n{"candidates": ['
                    )
                dropped.append(1)

    threading.Thread(target=drop_every_connection, daemon=True).start()
    try:
        provider = GoogleProvider.gemini(
            "key",
            Settings().models,
            base_url=f"http://127.0.0.1:{listener.getsockname()[1]}",
            retry=UpstreamRetryPolicy(timeout_s=10.0, backoff_s=0.01, max_attempts=2),
            limiter=LocalLimiter(),
        )
        failure = _fail(provider, REQUEST)
    finally:
        listener.close()
    assert isinstance(failure, UpstreamError)
    assert failure.fail_code == "500"
    assert failure.upstream_status == "connection"
    assert "the connection to Google failed" in failure.message
    assert "gave up after 2 attempt(s)" in failure.message
    assert len(dropped) >= 2


# --------------------------------------------------------------------------- safety


def test_a_blocked_prompt_fails_403(fake: FakeGemini) -> None:
    fake.script(Reply(block_reason="PROHIBITED_CONTENT"))
    failure = _fail(_provider(fake), REQUEST)
    assert isinstance(failure, SafetyBlocked)
    assert failure.fail_code == "403"
    assert "PROHIBITED_CONTENT" in failure.message
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    "reason", ["IMAGE_SAFETY", "PROHIBITED_CONTENT", "NO_IMAGE", "SAFETY", "RECITATION"]
)
def test_a_safety_finish_reason_fails_403(fake: FakeGemini, reason: str) -> None:
    fake.script(Reply(finish_reason=reason))
    failure = _fail(_provider(fake), REQUEST)
    assert failure.fail_code == "403"
    assert f"finishReason {reason}" in failure.message
    assert len(fake.requests) == 1


def test_an_answer_without_an_image_fails_500_with_what_the_model_said(fake: FakeGemini) -> None:
    fake.script(Reply(with_image=False))
    failure = _fail(_provider(fake), REQUEST)
    assert failure.fail_code == "500"
    assert "I can't make that image." in failure.message


# --------------------------------------------------------------------------- input limits


def test_inputs_too_large_for_the_upstream_are_downscaled(fake: FakeGemini) -> None:
    big = _png(900, 900, noise=True)  # ~2.4 MB of incompressible pixels
    small = _png(30, 30)
    limits = InlineLimits(per_image=600_000, per_request=None)
    request = GenerationRequest(
        model="nano-banana-pro",
        prompt="x",
        images=[InputImage(big, "image/png"), InputImage(small, "image/png")],
    )
    _generate(_provider(fake, limits=limits), request)
    (seen,) = fake.requests
    sent_big, sent_small = seen.images
    assert sent_small == small  # small enough: untouched
    assert len(sent_big) <= 600_000
    assert seen.parts[1]["inlineData"]["mimeType"] == "image/jpeg"
    width, height = _size(sent_big)
    assert width == height
    assert width >= 512


def test_the_request_total_is_shared_between_inputs() -> None:
    images = [(_png(700, 700, noise=True), "image/png") for _ in range(3)]
    fitted = imaging.fit_inputs(images, per_image=None, per_request=1_500_000)
    assert sum(len(data) for data, _ in fitted) <= 1_500_000


def test_an_input_that_cannot_fit_fails_400(fake: FakeGemini) -> None:
    limits = InlineLimits(per_image=2_000, per_request=None)
    request = GenerationRequest(
        model="nano-banana-pro",
        prompt="x",
        images=[
            InputImage(_png(20, 20), "image/png"),
            InputImage(_png(900, 900, noise=True), "image/png"),
        ],
    )
    failure = _fail(_provider(fake, limits=limits), request)
    assert failure.fail_code == "400"
    assert failure.message.startswith("image_input[1]: ")
    assert fake.requests == []


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


@pytest.mark.parametrize("side", [9_000, 20_000, 60_000])
def test_decompression_bombs_are_refused_from_the_header(side: int) -> None:
    with pytest.raises(InputError, match=r"^image_input\[3\]: "):
        imaging.check_input(3, _png_header(side, side), 64_000_000)


def test_a_normal_input_passes_the_check() -> None:
    assert imaging.check_input(0, _png(30, 20), 64_000_000) == (30, 20)
    with pytest.raises(InputError, match="not a decodable image"):
        imaging.check_input(0, b"\x89PNG\r\n\x1a\ngarbage", 64_000_000)

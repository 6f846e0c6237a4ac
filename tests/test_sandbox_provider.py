"""Unit: the sandbox provider must look like Nano Banana Pro to a client: sizes, encodings,
determinism and failure codes; these tests pin each of those promises."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Sequence

import pytest
from PIL import Image

from bananastand.contract import AspectRatio, OutputFormat, Resolution, output_size
from bananastand.errors import (
    ConfigurationError,
    InputError,
    SafetyBlocked,
    TaskFailure,
    UpstreamError,
    UpstreamTimeout,
)
from bananastand.providers import sandbox
from bananastand.providers.base import (
    DetachedAttempt,
    GeneratedImage,
    GenerationRequest,
    InputImage,
)
from bananastand.providers.sandbox import SandboxProvider

MODEL = "nano-banana-pro"
RATIOS: list[AspectRatio] = [r for r in AspectRatio if r is not AspectRatio.AUTO]
FORMATS = list(OutputFormat)
PIL_FORMAT = {OutputFormat.PNG: "PNG", OutputFormat.JPG: "JPEG", OutputFormat.WEBP: "WEBP"}


def make_image(width: int, height: int, fmt: str = "PNG", exif_orientation: int = 0) -> bytes:
    img = Image.new("RGB", (width, height), (200, 60, 40))
    out = io.BytesIO()
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(out, format=fmt, exif=exif)
    else:
        img.save(out, format=fmt)
    return out.getvalue()


def request(
    prompt: str = "a banana stand at sunset",
    *,
    images: Sequence[InputImage] = (),
    aspect_ratio: AspectRatio = AspectRatio.R1_1,
    resolution: Resolution = Resolution.R1K,
    output_format: OutputFormat = OutputFormat.PNG,
    model: str = MODEL,
) -> GenerationRequest:
    return GenerationRequest(
        model=model,
        prompt=prompt,
        images=tuple(images),
        aspect_ratio=aspect_ratio,
        resolution=resolution,
        output_format=output_format,
    )


def generate(req: GenerationRequest, provider: SandboxProvider | None = None) -> GeneratedImage:
    async def run() -> GeneratedImage:
        p = provider or SandboxProvider()
        try:
            return await p.generate(req, DetachedAttempt())
        finally:
            if provider is None:
                await p.aclose()

    return asyncio.run(run())


def decode(result: GeneratedImage) -> Image.Image:
    img = Image.open(io.BytesIO(result.data))
    img.load()
    return img


@pytest.mark.parametrize("resolution", list(Resolution))
@pytest.mark.parametrize("aspect_ratio", RATIOS)
def test_every_ratio_and_resolution_has_the_upstream_pixel_size(
    aspect_ratio: AspectRatio, resolution: Resolution
) -> None:
    # Formats rotate over the grid so every encoder also runs at 4K, at no extra cost.
    fmt = FORMATS[(RATIOS.index(aspect_ratio) + list(Resolution).index(resolution)) % 3]
    result = generate(request(aspect_ratio=aspect_ratio, resolution=resolution, output_format=fmt))
    img = decode(result)
    assert img.size == output_size(aspect_ratio, resolution)
    assert img.format == PIL_FORMAT[fmt]
    assert result.mime_type == fmt.mime_type
    assert (result.usage["width"], result.usage["height"]) == img.size


@pytest.mark.parametrize(
    ("aspect_ratio", "resolution", "size"),
    [
        (AspectRatio.R1_1, Resolution.R1K, (1024, 1024)),
        (AspectRatio.R16_9, Resolution.R1K, (1376, 768)),
        (AspectRatio.R16_9, Resolution.R2K, (2752, 1536)),
        (AspectRatio.R16_9, Resolution.R4K, (5504, 3072)),
    ],
)
def test_known_sizes_from_googles_table(
    aspect_ratio: AspectRatio, resolution: Resolution, size: tuple[int, int]
) -> None:
    result = generate(
        request(aspect_ratio=aspect_ratio, resolution=resolution, output_format=OutputFormat.JPG)
    )
    assert decode(result).size == size


def test_auto_without_images_is_square() -> None:
    result = generate(request(aspect_ratio=AspectRatio.AUTO))
    assert decode(result).size == (1024, 1024)
    assert result.usage["aspect_ratio"] == "1:1"


def test_auto_follows_the_first_input_image() -> None:
    # 2:1 lies between 16:9 (1.78) and 21:9 (2.33); 16:9 is nearer.
    images = [
        InputImage(make_image(600, 300), "image/png"),
        InputImage(make_image(300, 600), "image/png"),
    ]
    result = generate(request(images=images, aspect_ratio=AspectRatio.AUTO))
    assert decode(result).size == (1376, 768)
    assert result.usage["aspect_ratio"] == "16:9"


def test_auto_with_portrait_input() -> None:
    images = [InputImage(make_image(300, 600, "JPEG"), "image/jpeg")]
    result = generate(
        request(images=images, aspect_ratio=AspectRatio.AUTO, resolution=Resolution.R2K)
    )
    assert decode(result).size == (768 * 2, 1376 * 2)


def test_auto_honours_exif_rotation() -> None:
    # Stored 300x600 but tagged "rotate 90": viewers (and the model) see 600x300.
    images = [InputImage(make_image(300, 600, "JPEG", exif_orientation=6), "image/jpeg")]
    result = generate(request(images=images, aspect_ratio=AspectRatio.AUTO))
    assert decode(result).size == (1376, 768)


@pytest.mark.parametrize(
    ("fmt", "magic"),
    [
        (OutputFormat.PNG, b"\x89PNG\r\n\x1a\n"),
        (OutputFormat.JPG, b"\xff\xd8\xff"),
        (OutputFormat.WEBP, b"RIFF"),
    ],
)
def test_output_format_magic_bytes(fmt: OutputFormat, magic: bytes) -> None:
    result = generate(request(output_format=fmt))
    assert result.data.startswith(magic)
    if fmt is OutputFormat.WEBP:
        assert result.data[8:12] == b"WEBP"
    assert result.mime_type == fmt.mime_type
    assert decode(result).format == PIL_FORMAT[fmt]


def test_same_request_same_bytes_across_instances() -> None:
    images = [InputImage(make_image(64, 48), "image/png")]
    for fmt in FORMATS:
        first = generate(request(images=images, output_format=fmt))
        second = generate(request(images=images, output_format=fmt))
        assert first.data == second.data


def test_different_requests_different_bytes() -> None:
    base = generate(request("a banana"))
    assert generate(request("a banana!")).data != base.data
    assert generate(request("a banana", model="other-model")).data != base.data
    with_image = generate(request("a banana", images=[InputImage(make_image(8, 8), "image/png")]))
    assert with_image.data != base.data


def test_usage_names_the_provider() -> None:
    result = generate(request())
    assert result.usage["provider"] == "sandbox"
    assert isinstance(result.usage["render_ms"], float)


def test_cache_reuses_the_render() -> None:
    async def run() -> None:
        provider = SandboxProvider()
        first = await provider.generate(request(), DetachedAttempt())
        second = await provider.generate(request(), DetachedAttempt())
        assert provider.renders == 1
        assert second.data is first.data
        assert (first.usage["cache"], second.usage["cache"]) == ("miss", "hit")
        await provider.generate(request("something else"), DetachedAttempt())
        assert provider.renders == 2

    asyncio.run(run())


def test_cache_is_bounded_lru() -> None:
    async def run() -> None:
        provider = SandboxProvider(cache_size=1)
        await provider.generate(request("a"), DetachedAttempt())
        await provider.generate(request("b"), DetachedAttempt())  # evicts "a"
        await provider.generate(request("a"), DetachedAttempt())
        assert provider.renders == 3
        await provider.generate(request("a"), DetachedAttempt())
        assert provider.renders == 3

    asyncio.run(run())


def test_cache_size_zero_disables_caching() -> None:
    async def run() -> None:
        provider = SandboxProvider(cache_size=0)
        first = await provider.generate(request(), DetachedAttempt())
        second = await provider.generate(request(), DetachedAttempt())
        assert provider.renders == 2
        assert first.data == second.data

    asyncio.run(run())


def test_concurrent_identical_requests_render_once() -> None:
    async def run() -> None:
        provider = SandboxProvider()
        results = await asyncio.gather(
            *(provider.generate(request(), DetachedAttempt()) for _ in range(5))
        )
        assert provider.renders == 1
        assert all(r.data is results[0].data for r in results)

    asyncio.run(run())


@pytest.mark.parametrize(
    ("tag", "error", "fail_code"),
    [
        ("[sandbox:fail=safety]", SafetyBlocked, "403"),
        ("[sandbox:fail=input]", InputError, "400"),
        ("[sandbox:fail=upstream]", UpstreamError, "500"),
        ("[sandbox:fail=timeout]", UpstreamTimeout, "504"),
        ("[sandbox:fail=typo]", InputError, "400"),
    ],
)
def test_magic_failure_prompts(tag: str, error: type[TaskFailure], fail_code: str) -> None:
    provider = SandboxProvider()
    with pytest.raises(error) as info:
        generate(request(f"a cat {tag} on a mat"), provider)
    assert info.value.fail_code == fail_code
    assert info.value.message.startswith("sandbox:")
    assert provider.renders == 0


def test_safety_message_mentions_image_safety() -> None:
    with pytest.raises(SafetyBlocked, match="IMAGE_SAFETY"):
        generate(request("[sandbox:fail=safety]"))


def test_magic_delay_prompt_waits() -> None:
    started = time.monotonic()
    result = generate(request("slow please [sandbox:delay=50]"))
    assert time.monotonic() - started >= 0.05
    assert result.usage["delay_ms"] == 50


def test_constructor_delay_applies_to_every_task() -> None:
    started = time.monotonic()
    generate(request(), SandboxProvider(delay_ms=50))
    assert time.monotonic() - started >= 0.05


def test_magic_delay_is_capped() -> None:
    assert sandbox._magic_delay_ms("[sandbox:delay=99999999999]") == sandbox.MAX_MAGIC_DELAY_MS
    assert sandbox._magic_delay_ms("no tag") == 0


def test_undecodable_input_names_its_index() -> None:
    good = InputImage(make_image(32, 32), "image/png")
    bad = InputImage(b"definitely not an image", "image/png")
    with pytest.raises(InputError, match=r"image_input\[1\] is not a decodable image") as info:
        generate(request(images=[good, bad]))
    assert info.value.fail_code == "400"


def test_truncated_input_is_undecodable() -> None:
    data = make_image(256, 256, "JPEG")
    truncated = InputImage(data[: len(data) // 2], "image/jpeg")
    with pytest.raises(InputError, match=r"image_input\[0\]"):
        generate(request(images=[truncated]))


def test_very_long_prompt_and_many_images_render() -> None:
    prompt = ("lorem ipsum dolor sit amet " * 400)[:10000]
    images = [InputImage(make_image(40 + i, 30, "JPEG"), "image/jpeg") for i in range(14)]
    for ratio in (AspectRatio.R9_16, AspectRatio.R21_9):
        result = generate(request(prompt, images=images, aspect_ratio=ratio))
        assert decode(result).size == output_size(ratio, Resolution.R1K)


def test_unbroken_prompt_wraps() -> None:
    result = generate(request("x" * 10000))
    assert decode(result).size == (1024, 1024)


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ConfigurationError):
        SandboxProvider(delay_ms=-1)
    with pytest.raises(ConfigurationError):
        SandboxProvider(cache_size=-1)

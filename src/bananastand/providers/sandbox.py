"""The offline ``sandbox`` provider: real images, no upstream, no API key, no cost.

Integrators need to exercise the whole task lifecycle (submit, poll, callback, download,
failure handling) in CI and on a laptop without paying for Nano Banana Pro or depending on
the network. So this provider answers like the real one where it matters to a client:

* the image has the exact pixel size Nano Banana Pro returns for the aspect ratio and
  resolution (``auto`` follows the first input image's shape, else 1:1), and is really
  encoded in the requested format, so size checks and decoders behave as in production;
* the same request always yields the same bytes, so clients can snapshot-test outputs;
* the picture is plainly marked SANDBOX and shows the prompt, model, resolution, aspect
  ratio and thumbnails of the inputs, so nobody mistakes it for a generated image and
  integrators can see that their prompt and images arrived intact and in order.

Magic prompts, in the spirit of payment-provider test cards, let integrators trigger each
failure path on demand. Put the tag anywhere in the prompt:

==========================  ===================  ========
tag                         raises               failCode
==========================  ===================  ========
``[sandbox:fail=input]``    ``InputError``       400
``[sandbox:fail=safety]``   ``SafetyBlocked``    403
``[sandbox:fail=upstream]`` ``UpstreamError``    500
``[sandbox:fail=timeout]``  ``UpstreamTimeout``  504
``[sandbox:delay=MS]``      waits MS milliseconds (at most 600000) before answering
==========================  ===================  ========

Delays come first, then failures, so ``[sandbox:delay=30000][sandbox:fail=timeout]``
behaves like a real upstream that hangs and then gives up. An unknown ``fail=`` mode is an
``InputError`` rather than silently succeeding, so a typo in a test shows up at once.
The constructor's ``delay_ms`` is added to every task, to make a whole deployment feel
as slow as the real service.
"""

from __future__ import annotations

import asyncio
import colorsys
import functools
import hashlib
import io
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, ImageOps

from bananastand.contract import (
    STANDARD_ASPECT_RATIOS,
    AspectRatio,
    OutputFormat,
    output_size,
)
from bananastand.errors import (
    ConfigurationError,
    InputError,
    SafetyBlocked,
    TaskFailure,
    UpstreamError,
    UpstreamTimeout,
)
from bananastand.providers.base import GeneratedImage, GenerationRequest, InputImage
from bananastand.providers.limits import UpstreamLimiter
from bananastand.providers.local_limiter import LocalLimiter

__all__ = ["MAGIC_PROMPTS", "MAX_MAGIC_DELAY_MS", "SandboxProvider"]

#: Upper bound of ``[sandbox:delay=MS]``: long enough to test client timeouts, short
#: enough that a stray tag cannot pin a worker slot for hours.
MAX_MAGIC_DELAY_MS = 600_000

#: Bumped whenever the picture changes, so old and new renders never share a cache key.
_RENDER_VERSION = b"sandbox-render-v1"

_FAIL_RE = re.compile(r"\[sandbox:fail=([A-Za-z_-]*)\]", re.IGNORECASE)
_DELAY_RE = re.compile(r"\[sandbox:delay=(\d{1,12})\]", re.IGNORECASE)

_FAILURES: dict[str, tuple[type[TaskFailure], str]] = {
    "input": (InputError, "sandbox: request rejected as invalid input ([sandbox:fail=input])"),
    "safety": (SafetyBlocked, "sandbox: blocked by safety filters (IMAGE_SAFETY)"),
    "upstream": (UpstreamError, "sandbox: simulated upstream error ([sandbox:fail=upstream])"),
    "timeout": (UpstreamTimeout, "sandbox: simulated upstream timeout ([sandbox:fail=timeout])"),
}
#: Each ``fail=`` mode in a few words, for people reading `MAGIC_PROMPTS`.
_FAILURE_WORDS = {
    "input": "invalid input",
    "safety": "safety block",
    "upstream": "upstream error",
    "timeout": "upstream timeout",
}
#: The magic tags and what each does, as ``GET /api/v1/models`` lists them for test keys.
MAGIC_PROMPTS: tuple[tuple[str, str], ...] = (
    *(
        (f"[sandbox:fail={mode}]", f"fails with failCode {cls.fail_code} ({_FAILURE_WORDS[mode]})")
        for mode, (cls, _message) in _FAILURES.items()
    ),
    (
        "[sandbox:delay=MS]",
        f"waits MS milliseconds (at most {MAX_MAGIC_DELAY_MS}) in generating before it ends",
    ),
)

FontT = ImageFont.FreeTypeFont | ImageFont.ImageFont
RGB = tuple[int, int, int]

_YELLOW: RGB = (255, 212, 0)
_INK: RGB = (20, 20, 20)
_WHITE: RGB = (245, 245, 245)

#: Only this much of a prompt is ever laid out; longer prompts are cut with a note, so a
#: 10000-character prompt costs the same as a 2000-character one.
_PROMPT_LAYOUT_CHARS = 4000
#: More characters than any line holds at the smallest prompt face on the widest image.
_MAX_LINE_CHARS = 600


@dataclass(frozen=True, slots=True)
class _Render:
    data: bytes
    width: int
    height: int
    aspect_ratio: AspectRatio
    render_ms: float


class SandboxProvider:
    """A provider that draws a labelled placeholder instead of calling Google.

    Renders are cached (LRU, ``cache_size`` entries, 0 disables) because the output is a
    pure function of the request and a 4K encode is the only real cost here; identical
    requests in flight at the same time share one render.
    """

    name = "sandbox"

    def __init__(self, *, delay_ms: int = 0, cache_size: int = 64) -> None:
        if delay_ms < 0:
            raise ConfigurationError("sandbox delay_ms must be >= 0")
        if cache_size < 0:
            raise ConfigurationError("sandbox cache_size must be >= 0")
        self.delay_ms = delay_ms
        self.cache_size = cache_size
        #: No upstream to protect: never waits.
        self.limiter: UpstreamLimiter = LocalLimiter()
        #: How many renders actually ran (cache misses); lets tests and metrics see reuse.
        self.renders = 0
        self._cache: OrderedDict[bytes, _Render] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[_Render]] = {}

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        delay_ms = self.delay_ms + _magic_delay_ms(request.prompt)
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        failure = _magic_failure(request.prompt)
        if failure is not None:
            raise failure

        key = _request_key(request)
        render, how = await self._render(key, request)
        usage: dict[str, int | float | str] = {
            "provider": self.name,
            "render_ms": render.render_ms,
            "cache": how,
            "width": render.width,
            "height": render.height,
            "aspect_ratio": render.aspect_ratio.value,
        }
        if delay_ms > 0:
            usage["delay_ms"] = delay_ms
        return GeneratedImage(
            data=render.data, mime_type=request.output_format.mime_type, usage=usage
        )

    async def aclose(self) -> None:
        self._cache.clear()

    async def _render(self, key: bytes, request: GenerationRequest) -> tuple[_Render, str]:
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached, "hit"
        loop = asyncio.get_running_loop()
        pending = self._inflight.get(key)
        if pending is not None and pending.get_loop() is loop:
            # Shielded so that one waiter being cancelled does not cancel the others.
            return await asyncio.shield(pending), "joined"

        self.renders += 1
        task = asyncio.ensure_future(asyncio.to_thread(_render_request, request, key))
        self._inflight[key] = task
        task.add_done_callback(functools.partial(self._settle, key))
        return await asyncio.shield(task), "miss"

    def _settle(self, key: bytes, task: asyncio.Future[_Render]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        # Reading the exception marks it retrieved even when every waiter was cancelled.
        if task.cancelled() or task.exception() is not None or self.cache_size == 0:
            return
        self._cache[key] = task.result()
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


# --------------------------------------------------------------------------- magic tags


def _magic_delay_ms(prompt: str) -> int:
    match = _DELAY_RE.search(prompt)
    return min(int(match.group(1)), MAX_MAGIC_DELAY_MS) if match else 0


def _magic_failure(prompt: str) -> TaskFailure | None:
    match = _FAIL_RE.search(prompt)
    if match is None:
        return None
    mode = match.group(1).lower()
    if mode not in _FAILURES:
        known = ", ".join(sorted(_FAILURES))
        return InputError(f"sandbox: unknown magic prompt fail={mode!r} (known: {known})")
    # A fresh instance per task: exceptions carry tracebacks and must not be shared.
    cls, message = _FAILURES[mode]
    return cls(message)


# --------------------------------------------------------------------------- rendering


def _request_key(request: GenerationRequest) -> bytes:
    """Digest of everything that influences the bytes, length-prefixed to be unambiguous."""
    h = hashlib.sha256(_RENDER_VERSION)

    def put(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)

    for text in (
        request.model,
        request.prompt,
        request.aspect_ratio.value,
        request.resolution.value,
        request.output_format.value,
    ):
        put(text.encode("utf-8", "surrogatepass"))
    put(len(request.images).to_bytes(4, "big"))
    for image in request.images:
        put(image.mime_type.encode("utf-8", "surrogatepass"))
        put(hashlib.sha256(image.data).digest())
    return h.digest()


def _render_request(request: GenerationRequest, key: bytes) -> _Render:
    """Decode, draw and encode; runs in a worker thread (all of it is CPU work)."""
    started = time.perf_counter()
    inputs = _open_inputs(request.images)
    aspect = request.aspect_ratio
    if aspect is AspectRatio.AUTO:
        aspect = _nearest_aspect(*inputs[0][1]) if inputs else AspectRatio.R1_1
    width, height = output_size(aspect, request.resolution)
    canvas = _draw(request, key, inputs, aspect, width, height)
    data = _encode(canvas, request.output_format)
    render_ms = round((time.perf_counter() - started) * 1000, 1)
    return _Render(data, width, height, aspect, render_ms)


def _open_inputs(images: Sequence[InputImage]) -> list[tuple[Image.Image, tuple[int, int]]]:
    """Each input decoded, with its shape as shown (taken before any reduced decode)."""
    opened: list[tuple[Image.Image, tuple[int, int]]] = []
    for index, image in enumerate(images):
        try:
            img = Image.open(io.BytesIO(image.data))
            shape = _oriented_size(img)
            # Open only parses the header; decode now so corrupt bodies fail here, with
            # the draft hint letting JPEG decode at reduced size (thumbnails are small).
            img.draft(None, (1024, 1024))
            img.load()
        except Exception as exc:
            raise InputError(f"image_input[{index}] is not a decodable image") from exc
        opened.append((img, shape))
    return opened


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """Size as a viewer shows it: phone photos are often stored sideways plus an EXIF tag."""
    width, height = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _nearest_aspect(width: int, height: int) -> AspectRatio:
    """Closest supported ratio in log space, so 2:1 and 1:2 are judged symmetrically."""
    target = math.log(max(width, 1) / max(height, 1))

    def distance(ratio: AspectRatio) -> float:
        num, den = (int(part) for part in ratio.value.split(":"))
        return abs(math.log(num / den) - target)

    return min(STANDARD_ASPECT_RATIOS, key=distance)


_fonts = threading.local()


def _font(size: int) -> FontT:
    """Fonts cached per thread: a FreeType face must not be used by two threads at once."""
    cache: dict[int, FontT] | None = getattr(_fonts, "by_size", None)
    if cache is None:
        cache = _fonts.by_size = {}
    size = max(size, 6)
    font = cache.get(size)
    if font is None:
        font = cache[size] = ImageFont.load_default(size=size)
    return font


def _palette(key: bytes) -> tuple[RGB, RGB, RGB]:
    """Two dark background shades and an accent, all from the request hash."""
    hue = key[0] / 255
    spread = 0.08 + key[1] / 255 * 0.2

    def hls(h: float, lightness: float, saturation: float) -> RGB:
        r, g, b = colorsys.hls_to_rgb(h % 1.0, lightness, saturation)
        return round(r * 255), round(g * 255), round(b * 255)

    top = hls(hue, 0.30 + key[2] / 255 * 0.06, 0.45 + key[3] / 255 * 0.3)
    bottom = hls(hue + spread, 0.16 + key[4] / 255 * 0.05, 0.5)
    accent = hls(hue + 0.5, 0.72, 0.85)
    return top, bottom, accent


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def _background(width: int, height: int, top: RGB, bottom: RGB) -> Image.Image:
    # A vertical gradient keeps every row flat, which PNG's filters compress to nothing,
    # and is built from a 1-pixel-wide strip so 4K costs one cheap resize.
    strip = Image.linear_gradient("L").resize((1, 256))
    strip = ImageOps.colorize(strip, black=top, white=bottom)
    return strip.resize((width, height), Image.Resampling.BILINEAR)


def _fit_font(text: str, max_width: float, max_size: int) -> FontT:
    length = _font(100).getlength(text) or 1.0
    size = min(max_size, int(100 * max_width / length))
    # Hinting makes widths not quite proportional to the size; step down until it fits.
    while size > 6 and _font(size).getlength(text) > max_width:
        size -= 1
    return _font(size)


def _truncate(text: str, font: FontT, max_width: float) -> str:
    if font.getlength(text) <= max_width:
        return text
    while text and font.getlength(text + "…") > max_width:
        text = text[:-1]
    return text + "…"


def _split_word(word: str, font: FontT, max_width: float, limit: int) -> list[str]:
    """Pieces of a word wider than the line (a URL, base64, CJK without spaces).

    At most ``limit`` full pieces are cut, and no line is assumed to hold more than
    ``_MAX_LINE_CHARS``, so a 10000-character word costs no more than a page of text.
    """
    pieces: list[str] = []
    while (
        len(pieces) < limit
        and len(word) > 1
        and font.getlength(word[: _MAX_LINE_CHARS + 1]) > max_width
    ):
        lo, hi = 1, min(len(word) - 1, _MAX_LINE_CHARS)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if font.getlength(word[:mid]) <= max_width:
                lo = mid
            else:
                hi = mid - 1
        pieces.append(word[:lo])
        word = word[lo:]
    pieces.append(word)
    return pieces


def _wrap(text: str, font: FontT, max_width: float, max_lines: int) -> tuple[list[str], bool]:
    """Greedy word wrap that stops after ``max_lines``; says whether text was left over."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= max_width:
                line = candidate
                continue
            if line:
                lines.append(line)
            *full, line = _split_word(word, font, max_width, max_lines + 1 - len(lines))
            lines.extend(full)
            if len(lines) > max_lines:
                return lines[:max_lines], True
        lines.append(line)
        if len(lines) > max_lines:
            return lines[:max_lines], True
    return lines, False


def _draw(
    request: GenerationRequest,
    key: bytes,
    inputs: Sequence[tuple[Image.Image, tuple[int, int]]],
    aspect: AspectRatio,
    width: int,
    height: int,
) -> Image.Image:
    top, bottom, accent = _palette(key)
    canvas = _background(width, height, top, bottom)
    draw = ImageDraw.Draw(canvas)
    # One unit is ~10 px at 1K whatever the aspect ratio, ~40 px at 4K.
    u = math.sqrt(width * height) / 100
    margin = round(3 * u)
    inner_w = width - 2 * margin

    # Banner: hazard-taped yellow band with SANDBOX as large as fits.
    banner_h = round(15 * u)
    draw.rectangle((0, 0, width, banner_h), fill=_YELLOW)
    tape = max(2, round(1.6 * u))
    stripe = 2 * tape
    for y0 in (0, banner_h - tape):
        draw.rectangle((0, y0, width, y0 + tape), fill=_YELLOW)
        for x in range(-stripe, width + stripe, 2 * stripe):
            draw.polygon(
                [(x, y0 + tape), (x + tape, y0), (x + tape + stripe, y0), (x + stripe, y0 + tape)],
                fill=_INK,
            )
    title = "SANDBOX"
    title_font = _fit_font(title, inner_w * 0.9, round(10 * u))
    draw.text(
        (width / 2, banner_h / 2),
        title,
        font=title_font,
        fill=_INK,
        anchor="mm",
        stroke_width=max(1, round(0.35 * u)),
        stroke_fill=_INK,
    )

    # Facts line: what an integrator checks first.
    y = banner_h + round(2 * u)
    ratio = f"{aspect.value} (auto)" if request.aspect_ratio is AspectRatio.AUTO else aspect.value
    facts = (
        f"{request.model}  ·  {request.resolution.value}  ·  {ratio}  ·  "
        f"{request.output_format.value}  ·  {width}x{height}"
    )
    # Shrunk to fit rather than cut: the pixel size at the end is what gets checked.
    facts_font = _fit_font(facts, inner_w, round(3.2 * u))
    draw.text((margin, y), _truncate(facts, facts_font, inner_w), font=facts_font, fill=accent)
    y += round(3.2 * u * 1.45)
    note = "offline test render, not generated by a model · same request, same bytes"
    note_font = _fit_font(note, inner_w, round(2.2 * u))
    draw.text((margin, y), _truncate(note, note_font, inner_w), font=note_font, fill=_WHITE)
    y += round(2.2 * u * 1.6) + round(1.5 * u)

    # Footer.
    footer_font = _font(round(2 * u))
    footer_y = height - margin - round(2 * u)
    footer = f"request {key.hex()[:16]} · {len(request.images)} input image(s)"
    draw.text((margin, footer_y), footer, font=footer_font, fill=_mix(_WHITE, bottom, 0.35))

    # Thumbnails, in the order the worker passed them, shrinking until they fit a third.
    thumbs_top = footer_y - round(1.5 * u)
    if inputs:
        gap = round(1.5 * u)
        label_font_size = 2.0 * u
        cell = 16 * u
        while True:
            per_row = max(1, int((inner_w + gap) // (cell + gap)))
            rows = math.ceil(len(inputs) / per_row)
            block = rows * (cell + label_font_size * 1.4 + gap)
            if block <= (height - y) * 0.38 or cell <= 4 * u:
                break
            cell *= 0.85
        cell_px = max(8, round(cell))
        label_size = round(min(label_font_size, cell / 6))
        label_font = _font(label_size)
        label_h = round(label_size * 1.4)
        thumbs_top = round(footer_y - round(1.5 * u) - block)
        for index, (img, _) in enumerate(inputs):
            row, col = divmod(index, per_row)
            x0 = margin + col * (cell_px + gap)
            y0 = thumbs_top + row * (cell_px + label_h + gap)
            draw.rectangle(
                (x0, y0, x0 + cell_px - 1, y0 + cell_px - 1), fill=_mix(bottom, _INK, 0.5)
            )
            thumb = _thumbnail(img, cell_px)
            canvas.paste(
                thumb,
                (x0 + (cell_px - thumb.width) // 2, y0 + (cell_px - thumb.height) // 2),
                thumb if thumb.mode == "RGBA" else None,
            )
            draw.rectangle(
                (x0, y0, x0 + cell_px - 1, y0 + cell_px - 1),
                outline=accent,
                width=max(1, round(0.25 * u)),
            )
            label = f"image_input[{index}]"
            if label_font.getlength(label) > cell_px:
                label = _truncate(f"[{index}]", label_font, cell_px)
            draw.text((x0, y0 + cell_px + round(0.3 * u)), label, font=label_font, fill=_WHITE)

    # Prompt panel fills what is left.
    panel = (margin, y, width - margin, thumbs_top - round(1.5 * u))
    panel_fill = _mix(bottom, _INK, 0.55)
    draw.rounded_rectangle(panel, radius=round(1.5 * u), fill=panel_fill)
    pad = round(2 * u)
    head_font = _font(round(2.4 * u))
    draw.text(
        (panel[0] + pad, panel[1] + pad),
        f"PROMPT ({len(request.prompt)} chars)",
        font=head_font,
        fill=accent,
    )
    text_top = panel[1] + pad + round(2.4 * u * 1.6)
    text_w = panel[2] - panel[0] - 2 * pad
    text_h = panel[3] - text_top - pad
    size = 3.4 * u
    prompt, cut = _clean_prompt(request.prompt)
    # Long prompts get a smaller face before they get cut, down to about 2.4 units.
    while True:
        font = _font(round(size))
        line_h = round(size * 1.3)
        max_lines = max(1, int(text_h // line_h))
        lines, more = _wrap(prompt, font, text_w, max_lines)
        if not more or size <= 2.4 * u:
            break
        size *= 0.9
    if more or cut:
        tail = " … [truncated]"
        last = lines[-1]
        while last and font.getlength(last + tail) > text_w:
            last = last[:-1]
        lines[-1] = last.rstrip() + tail
    for i, line in enumerate(lines):
        draw.text((panel[0] + pad, text_top + i * line_h), line, font=font, fill=_WHITE)
    return canvas


def _clean_prompt(prompt: str) -> tuple[str, bool]:
    """Printable text to lay out, and whether it had to be cut before layout."""
    text = prompt[:_PROMPT_LAYOUT_CHARS]
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    text = "".join(ch if ch == "\n" or ch.isprintable() else " " for ch in text)
    return text.strip() or "(empty prompt)", len(prompt) > _PROMPT_LAYOUT_CHARS


def _thumbnail(img: Image.Image, cell: int) -> Image.Image:
    if img.mode not in ("RGB", "RGBA", "L"):
        has_alpha = "A" in img.mode or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
    # In place: each decoded input serves exactly one render.
    img.thumbnail((cell, cell), Image.Resampling.BILINEAR)
    return ImageOps.exif_transpose(img)


def _encode(canvas: Image.Image, fmt: OutputFormat) -> bytes:
    out = io.BytesIO()
    if fmt is OutputFormat.PNG:
        # Level 1: a 4K canvas is ~50 MB raw; higher levels cost seconds for a few percent.
        canvas.save(out, format="PNG", compress_level=1)
    elif fmt is OutputFormat.JPG:
        canvas.save(out, format="JPEG", quality=90)
    else:
        # method 0 is libwebp's fastest; the default (4) takes seconds at 4K.
        canvas.save(out, format="WEBP", quality=85, method=0)
    return out.getvalue()

"""The sandbox's picture: a labelled placeholder of the exact size Nano Banana Pro returns.

Everything here is CPU work (decode the inputs, draw, encode) and runs in a worker thread;
the output is a pure function of the request, so `request_key` is also what the provider
caches renders by. The picture is plainly marked SANDBOX and shows the prompt, model,
resolution, aspect ratio and thumbnails of the inputs, so nobody mistakes it for a
generated image and integrators can see that their prompt and images arrived intact and
in order.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageOps

from bananastand.contract import AspectRatio, OutputFormat, output_size
from bananastand.errors import InputError
from bananastand.imaging import nearest_aspect_ratio, shown_size
from bananastand.providers.base import GenerationRequest, InputImage
from bananastand.providers.sandbox_text import face, fit_font, truncate, wrap

#: Bumped whenever the picture changes, so old and new renders never share a cache key.
_RENDER_VERSION = b"sandbox-render-v1"

RGB = tuple[int, int, int]

_YELLOW: RGB = (255, 212, 0)
_INK: RGB = (20, 20, 20)
_WHITE: RGB = (245, 245, 245)

#: Only this much of a prompt is ever laid out; longer prompts are cut with a note, so a
#: 10000-character prompt costs the same as a 2000-character one.
_PROMPT_LAYOUT_CHARS = 4000


@dataclass(frozen=True, slots=True)
class Render:
    data: bytes
    width: int
    height: int
    #: What ``auto`` became (the request's own ratio otherwise).
    aspect_ratio: AspectRatio
    render_ms: float


def request_key(request: GenerationRequest) -> bytes:
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


def render(request: GenerationRequest, key: bytes) -> Render:
    """Decode, draw and encode; runs in a worker thread (all of it is CPU work)."""
    started = time.perf_counter()
    inputs = _open_inputs(request.images)
    aspect = request.aspect_ratio
    if aspect is AspectRatio.AUTO:
        aspect = nearest_aspect_ratio(*inputs[0][1]) if inputs else AspectRatio.R1_1
    width, height = output_size(aspect, request.resolution)
    canvas = _draw(request, key, inputs, aspect, width, height)
    data = _encode(canvas, request.output_format)
    render_ms = round((time.perf_counter() - started) * 1000, 1)
    return Render(data, width, height, aspect, render_ms)


def _open_inputs(images: Sequence[InputImage]) -> list[tuple[Image.Image, tuple[int, int]]]:
    """Each input decoded, with its shape as shown (taken before any reduced decode)."""
    opened: list[tuple[Image.Image, tuple[int, int]]] = []
    for index, image in enumerate(images):
        try:
            img = Image.open(io.BytesIO(image.data))
            shape = shown_size(img)
            # Open only parses the header; decode now so corrupt bodies fail here, with
            # the draft hint letting JPEG decode at reduced size (thumbnails are small).
            img.draft(None, (1024, 1024))
            img.load()
        except Exception as exc:
            raise InputError(f"image_input[{index}] is not a decodable image") from exc
        opened.append((img, shape))
    return opened


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
    title_font = fit_font(title, inner_w * 0.9, round(10 * u))
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
    facts_font = fit_font(facts, inner_w, round(3.2 * u))
    draw.text((margin, y), truncate(facts, facts_font, inner_w), font=facts_font, fill=accent)
    y += round(3.2 * u * 1.45)
    note = "offline test render, not generated by a model · same request, same bytes"
    note_font = fit_font(note, inner_w, round(2.2 * u))
    draw.text((margin, y), truncate(note, note_font, inner_w), font=note_font, fill=_WHITE)
    y += round(2.2 * u * 1.6) + round(1.5 * u)

    # Footer.
    footer_font = face(round(2 * u))
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
        label_font = face(label_size)
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
                label = truncate(f"[{index}]", label_font, cell_px)
            draw.text((x0, y0 + cell_px + round(0.3 * u)), label, font=label_font, fill=_WHITE)

    # Prompt panel fills what is left.
    panel = (margin, y, width - margin, thumbs_top - round(1.5 * u))
    panel_fill = _mix(bottom, _INK, 0.55)
    draw.rounded_rectangle(panel, radius=round(1.5 * u), fill=panel_fill)
    pad = round(2 * u)
    head_font = face(round(2.4 * u))
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
        font = face(round(size))
        line_h = round(size * 1.3)
        max_lines = max(1, int(text_h // line_h))
        lines, more = wrap(prompt, font, text_w, max_lines)
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

"""Image format work shared by the worker and providers (Pillow, run off the event loop)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from PIL import Image, ImageOps, UnidentifiedImageError

from bananastand.contract import STANDARD_ASPECT_RATIOS, AspectRatio, OutputFormat
from bananastand.errors import InputError, UpstreamError

_PIL_FORMATS = {OutputFormat.PNG: "PNG", OutputFormat.JPG: "JPEG", OutputFormat.WEBP: "WEBP"}
_MIME_BY_PIL = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def to_output_format(data: bytes, fmt: OutputFormat) -> bytes:
    """Re-encode only when needed; keep quality high (clients asked for a finished image)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if _MIME_BY_PIL.get(image.format or "") == fmt.mime_type:
                return data
            image.load()
            converted: Image.Image = image
            if fmt is OutputFormat.JPG and image.mode not in ("RGB", "L"):
                # JPEG has no alpha: flatten onto white instead of letting it turn black.
                rgba = image.convert("RGBA")
                converted = Image.new("RGB", rgba.size, (255, 255, 255))
                converted.paste(rgba, mask=rgba.getchannel("A"))
            out = io.BytesIO()
            options: dict[str, object] = {}
            if fmt is OutputFormat.JPG:
                options = {"quality": 95, "subsampling": 0}
            elif fmt is OutputFormat.WEBP:
                options = {"quality": 95, "method": 4}
            converted.save(out, format=_PIL_FORMATS[fmt], **options)
            return out.getvalue()
    except (UnidentifiedImageError, OSError) as exc:
        raise UpstreamError(
            f"the provider returned an image that cannot be decoded: {exc}"
        ) from exc


def preview(data: bytes, side: int) -> bytes:
    """A small WebP of an image: upright (EXIF orientation applied), at most ``side``
    pixels on its long side, transparency kept. Run in a thread."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.draft("RGB", (side, side))  # a JPEG decodes at a fraction of its size
        image = ImageOps.exif_transpose(opened)
    image.thumbnail((side, side))
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    out = io.BytesIO()
    image.convert("RGBA" if has_alpha else "RGB").save(out, format="WEBP", quality=80)
    return out.getvalue()


# --------------------------------------------------------------------------- auto

#: EXIF orientations that turn the stored picture a quarter turn (portrait phone photos).
_QUARTER_TURNS = (5, 6, 7, 8)


def shown_size(image: Image.Image) -> tuple[int, int]:
    """Size as a viewer shows it: phone photos are often stored sideways plus an EXIF tag.

    Read before any reduced decode (``draft``), which changes ``image.size``."""
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)


def nearest_aspect_ratio(width: int, height: int) -> AspectRatio:
    """What ``auto`` becomes for an image of this shape: the closest standard ratio in log
    space, so 2:1 and 1:2 are judged symmetrically. The sandbox renders it and the fake
    Gemini answers with it, so both follow an input image the same way."""
    target = math.log(max(width, 1) / max(height, 1))

    def distance(ratio: AspectRatio) -> float:
        num, den = (int(part) for part in ratio.value.split(":"))
        return abs(math.log(num / den) - target)

    return min(STANDARD_ASPECT_RATIOS, key=distance)


# --------------------------------------------------------------------------- inputs

#: Quality of re-encoded inputs: high, since the model copies what it sees.
_INPUT_QUALITY = 92
#: Below this longest side a shrunk reference image stops being worth sending.
_MIN_INPUT_SIDE = 512


def check_input(index: int, data: bytes, max_pixels: int) -> tuple[int, int]:
    """The input's pixel size, read from its header only; refuses undecodable headers and
    decompression bombs (a few KB of PNG can claim gigapixels)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            f"image_input[{index}]: too many pixels (at most {max_pixels} are accepted)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"image_input[{index}]: not a decodable image ({exc})") from None
    if width * height > max_pixels:
        raise InputError(f"image_input[{index}]: {width}x{height} is more than {max_pixels} pixels")
    return width, height


def fit_inputs(
    images: Sequence[tuple[bytes, str]], *, per_image: int | None, per_request: int | None
) -> list[tuple[bytes, str]]:
    """Each (data, mime type) as is when the upstream takes it, else downscaled and
    re-encoded until it fits: at most ``per_image`` bytes each and ``per_request`` in all
    (an even share each when the whole would not fit). Run in a thread."""
    total = sum(len(data) for data, _ in images)
    budget = per_image if per_image else None
    if per_request and total > per_request and images:
        share = per_request // len(images)
        budget = min(budget, share) if budget else share
    fitted: list[tuple[bytes, str]] = []
    for index, (data, mime_type) in enumerate(images):
        if budget is None or len(data) <= budget:
            fitted.append((data, mime_type))
        else:
            fitted.append(_shrink(index, data, budget))
    return fitted


def _shrink(index: int, data: bytes, budget: int) -> tuple[bytes, str]:
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened)
        image.load()
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    image = image.convert("RGBA" if has_alpha else "RGB")
    # WebP keeps transparency at JPEG-like sizes; JPEG is what every model reads best.
    fmt, mime_type = ("WEBP", "image/webp") if has_alpha else ("JPEG", "image/jpeg")
    scale = 1.0
    for _ in range(12):
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        if max(size) < _MIN_INPUT_SIDE and scale < 1.0:
            break
        candidate = image if scale == 1.0 else image.resize(size, Image.Resampling.LANCZOS)
        out = io.BytesIO()
        candidate.save(out, format=fmt, quality=_INPUT_QUALITY)
        if out.tell() <= budget:
            return out.getvalue(), mime_type
        # Bytes scale roughly with area: aim a little under the budget.
        scale *= max(0.5, min(0.9, (budget / out.tell()) ** 0.5 * 0.95))
    raise InputError(
        f"image_input[{index}]: {len(data)} bytes cannot be made to fit the upstream's "
        f"limit of {budget} bytes without losing too much detail"
    )

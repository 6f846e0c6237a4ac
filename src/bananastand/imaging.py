"""Image format work shared by the worker and providers (Pillow, run off the event loop)."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from bananastand.contract import OutputFormat
from bananastand.errors import UpstreamError

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

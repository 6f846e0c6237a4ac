"""The image types bananastand takes in (PNG, JPEG, WebP), told by their first bytes.

A file's type is what its bytes are, never what a ``Content-Type`` header or a file name
claims: the server decides so for every input it fetches, every upload and every stored
file it reads back, and the client names its uploads and the images it downloads the same
way. Both sides import this module, so it uses the standard library alone (the client
installs without the server's dependencies).
"""

from __future__ import annotations

from typing import Final

#: The first bytes that tell every type below apart (WebP's signature ends at byte 12).
SNIFF_BYTES: Final = 12

#: The file name extension each type is stored and saved under.
EXTENSIONS: Final = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}


def sniff_image_type(data: bytes) -> str | None:
    """The image type of ``data`` by its magic bytes, or None if not PNG/JPEG/WebP.

    ``data`` may be a whole file or just its first `SNIFF_BYTES` bytes.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= SNIFF_BYTES and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None

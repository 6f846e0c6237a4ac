"""Unit: the one magic-byte sniffer, and its callers on both sides agreeing through it.

The server reads a stored file back as an input image by what its bytes are (the name's
extension notwithstanding); the client names and labels an upload the same way. (The
fetcher's use of it runs against real HTTP servers in ``test_fetch.py``.)
"""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import pytest
from PIL import Image

from bananastand.client.actions import Send
from bananastand.client.flows import Core
from bananastand.errors import InputError
from bananastand.fetch import FetchPolicy, SafeFetcher
from bananastand.image_types import EXTENSIONS, SNIFF_BYTES, sniff_image_type
from bananastand.inputs import InputLoader
from bananastand.storage.links import LinkSigner
from bananastand.storage.local import LocalStorage


def encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format=fmt)
    return buf.getvalue()


IMAGES = {"image/png": encoded("PNG"), "image/jpeg": encoded("JPEG"), "image/webp": encoded("WEBP")}
NOT_IMAGES = {
    "gif": encoded("GIF"),
    "wave": b"RIFF\0\0\0\0WAVEfmt ",
    "a webp cut short": IMAGES["image/webp"][: SNIFF_BYTES - 1],
    "html": b"<!doctype html><html></html>",
    "empty": b"",
}


@pytest.mark.parametrize("mime_type", IMAGES)
def test_each_type_is_told_by_its_first_bytes(mime_type: str) -> None:
    data = IMAGES[mime_type]
    assert sniff_image_type(data) == mime_type
    assert sniff_image_type(data[:SNIFF_BYTES]) == mime_type


@pytest.mark.parametrize("name", NOT_IMAGES)
def test_other_bytes_are_no_image(name: str) -> None:
    assert sniff_image_type(NOT_IMAGES[name]) is None


def uploaded_part(data: bytes) -> tuple[str, str]:
    """The file name and Content-Type the client's upload sends for ``data``."""
    flow = Core.configure("http://bananastand.invalid", "key", None, None, None).upload(data)
    action = next(flow)
    flow.close()
    assert isinstance(action, Send)
    body = action.request.read()
    part = re.search(rb'name="file"; filename="([^"]+)"\r\nContent-Type: ([^\r]+)', body)
    assert part is not None, body[:300]
    return part[1].decode(), part[2].decode()


@pytest.mark.parametrize("mime_type", IMAGES)
def test_the_client_names_an_upload_after_its_bytes(mime_type: str) -> None:
    name, content_type = uploaded_part(IMAGES[mime_type])
    assert content_type == mime_type
    assert name.endswith(EXTENSIONS[mime_type])


def test_the_client_sends_other_bytes_unlabelled() -> None:
    name, content_type = uploaded_part(NOT_IMAGES["gif"])
    assert content_type == "application/octet-stream"
    assert "." not in name


def read_back(tmp_path: Path, stored_as: str, data: bytes) -> str:
    """The type the server gives a file of its own, linked as an input image."""
    storage = LocalStorage(tmp_path)
    links = LinkSigner(b"a secret of sixteen bytes or more", "http://bananastand.invalid")

    async def load() -> str:
        await storage.put(stored_as, data, "application/octet-stream")
        async with SafeFetcher(FetchPolicy()) as fetcher:
            loader = InputLoader(
                fetcher,
                storage,
                links=links,
                concurrency=1,
                max_bytes=1 << 20,
                max_pixels=1 << 20,
            )
            [image] = await loader.load([links.url_for(stored_as, 60)])
        return image.mime_type

    return asyncio.run(load())


@pytest.mark.parametrize("mime_type", IMAGES)
def test_the_server_reads_its_own_file_by_its_bytes_not_its_name(
    tmp_path: Path, mime_type: str
) -> None:
    # Stored under another type's extension: the bytes decide.
    misnamed = ".jpg" if mime_type != "image/jpeg" else ".png"
    assert read_back(tmp_path, f"uploads/a/input{misnamed}", IMAGES[mime_type]) == mime_type


def test_the_server_refuses_its_own_file_that_is_no_image(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a PNG, JPEG or WebP image"):
        read_back(tmp_path, "uploads/a/input.png", NOT_IMAGES["gif"])

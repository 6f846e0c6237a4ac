"""A task's ``image_input``: fetched (a few at a time), checked, and named in failures.

Our own signed file links (uploads, earlier results) are read straight from storage: a
result fed back as a reference needs no HTTP round trip through ourselves, and works
where the server cannot reach its own public address. Everything else goes through the
one SSRF-safe `SafeFetcher`. Any bad input fails the task with failCode "400" and a
failMsg that starts with ``image_input[N]:``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bananastand import imaging
from bananastand.errors import InputError
from bananastand.fetch import SafeFetcher
from bananastand.image_types import SNIFF_BYTES, sniff_image_type
from bananastand.providers.base import InputImage
from bananastand.storage.base import Storage
from bananastand.storage.links import LinkSigner


class InputLoader:
    def __init__(
        self,
        fetcher: SafeFetcher,
        storage: Storage,
        *,
        links: LinkSigner,
        concurrency: int,
        max_bytes: int,
        max_pixels: int,
    ) -> None:
        self._fetcher = fetcher
        self._storage = storage
        self._links = links
        self._concurrency = max(1, concurrency)
        self._max_bytes = max_bytes
        self._max_pixels = max_pixels

    async def load(self, urls: Sequence[str]) -> list[InputImage]:
        """All inputs in order, or the first failure (the other fetches are cancelled)."""
        if not urls:
            return []
        gate = asyncio.Semaphore(self._concurrency)
        try:
            async with asyncio.TaskGroup() as group:
                jobs = [
                    group.create_task(self._load_one(index, url, gate))
                    for index, url in enumerate(urls)
                ]
        except BaseExceptionGroup as failed:
            leaves = _leaves(failed)
            input_errors = [exc for exc in leaves if isinstance(exc, InputError)]
            raise (input_errors or leaves)[0] from None
        return [job.result() for job in jobs]

    async def _load_one(self, index: int, url: str, gate: asyncio.Semaphore) -> InputImage:
        async with gate:
            try:
                if self._links.is_ours(url):
                    key = self._links.parse(url)
                    if key is None:
                        raise InputError("the link is expired or not one this server made")
                    data, mime_type = await self._read_own(key)
                else:
                    fetched = await self._fetcher.fetch_image(url)
                    data, mime_type = fetched.data, fetched.mime_type
            except InputError as exc:
                raise InputError(f"image_input[{index}]: {exc.message}") from None
        await asyncio.to_thread(imaging.check_input, index, data, self._max_pixels)
        return InputImage(data=data, mime_type=mime_type)

    async def _read_own(self, key: str) -> tuple[bytes, str]:
        try:
            stored = await self._storage.get(key)
        except ValueError:
            stored = None
        if stored is None:
            raise InputError("no such file on this server")
        if len(stored.data) > self._max_bytes:
            raise InputError(f"the file is larger than the limit of {self._max_bytes} bytes")
        mime_type = sniff_image_type(stored.data[:SNIFF_BYTES])
        if mime_type is None:
            raise InputError("the file is not a PNG, JPEG or WebP image")
        return stored.data, mime_type


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found

"""Small previews of result images, for lists of tasks (the web page), made on demand.

A preview lives in storage beside its result, ``results/<task>/<name>.thumb.webp`` for
``results/<task>/<name>``: it belongs to the task as the result does, is served by the
same signed links, and goes when the sweep deletes the result (``retention``). It is
rendered the first time its link is opened, not when a list is served (most listed
tasks are never looked at) nor when the task ends (the worker's time is the upstream's),
and then served from storage like any other file.

Two first requests at once in one process share one render; in two processes each
renders the same bytes and the storage's writes are atomic, so a reader never sees a
torn preview.
"""

from __future__ import annotations

import asyncio
import logging

from bananastand import imaging
from bananastand.storage.base import ObjectInfo, Storage

log = logging.getLogger(__name__)

#: The long side of a preview, in pixels.
THUMBNAIL_SIDE = 256
THUMBNAIL_SUFFIX = ".thumb.webp"
#: Renders at once in one process: each holds a result (up to 4K) decoded in memory.
_RENDERS_AT_ONCE = 4


def thumbnail_key(result_key: str) -> str:
    return result_key + THUMBNAIL_SUFFIX


def is_thumbnail_key(key: str) -> bool:
    return key.endswith(THUMBNAIL_SUFFIX)


class Thumbnails:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._rendering: dict[str, asyncio.Task[ObjectInfo | None]] = {}
        self._slots = asyncio.Semaphore(_RENDERS_AT_ONCE)

    async def make(self, key: str) -> ObjectInfo | None:
        """Render and store the preview ``key`` names, from its result; None when ``key``
        is no preview's or its result is gone (swept).

        For a preview that is missing: its link's caller found nothing under ``key``.
        """
        if not is_thumbnail_key(key):
            return None
        rendering = self._rendering.get(key)
        if rendering is None:
            rendering = asyncio.create_task(self._render(key), name=key)
            self._rendering[key] = rendering
            rendering.add_done_callback(self._forget)
        # A caller that gives up (its client went away) leaves the render to the others.
        return await asyncio.shield(rendering)

    def _forget(self, done: asyncio.Task[ObjectInfo | None]) -> None:
        self._rendering.pop(done.get_name(), None)
        if not done.cancelled():
            done.exception()  # retrieved: its callers, if any are left, get it raised

    async def _render(self, key: str) -> ObjectInfo | None:
        async with self._slots:
            result = await self._storage.get(key.removesuffix(THUMBNAIL_SUFFIX))
            if result is None:
                return None
            data = await asyncio.to_thread(imaging.preview, result.data, THUMBNAIL_SIDE)
            await self._storage.put(key, data, "image/webp")
        log.info("thumbnail made", extra={"storage_key": key, "size": len(data)})
        return await self._storage.stat(key)

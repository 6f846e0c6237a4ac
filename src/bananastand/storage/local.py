"""Files on local disk, under one root folder.

The content type comes from the file name's extension: every key we make ends in the
extension of what the file really is (uploads are renamed to match their magic bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path, PurePosixPath
from stat import S_ISREG
from typing import IO

from bananastand.storage.base import CHUNK_BYTES, ObjectInfo, StoredFile

_TEMP_PREFIX = ".part-"


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        relative = PurePosixPath(key)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"storage key {key!r} escapes the storage root")
        return self.root.joinpath(*relative.parts)

    def _info(self, key: str, stat: os.stat_result) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=stat.st_size,
            etag=f'"{stat.st_ino:x}-{stat.st_size:x}-{stat.st_mtime_ns:x}"',
            modified_ms=stat.st_mtime_ns // 1_000_000,
            content_type=mimetypes.guess_type(key)[0] or "application/octet-stream",
        )

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        async def one() -> AsyncIterator[bytes]:
            yield data

        await self.put_stream(key, one(), content_type)

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], content_type: str
    ) -> ObjectInfo:
        # Write aside, fsync, then rename: a reader sees the whole file or none of it.
        path = self._path(key)
        handle = await asyncio.to_thread(self._open_aside, path)
        try:
            async for chunk in chunks:
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(self._commit, handle, path)
        except BaseException:
            await asyncio.to_thread(self._discard, handle)
            raise
        return self._info(key, await asyncio.to_thread(path.stat))

    @staticmethod
    def _open_aside(path: Path) -> IO[bytes]:
        # A sweeper may remove the (empty) folder between mkdir and the create: try again.
        for _ in range(5):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                return tempfile.NamedTemporaryFile(
                    dir=path.parent, prefix=_TEMP_PREFIX, delete=False
                )
            except FileNotFoundError:
                continue
        raise FileNotFoundError(path.parent)

    @staticmethod
    def _discard(handle: IO[bytes]) -> None:
        handle.close()
        Path(handle.name).unlink(missing_ok=True)

    @staticmethod
    def _commit(handle: IO[bytes], path: Path) -> None:
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.replace(handle.name, path)

    async def get(self, key: str) -> StoredFile | None:
        path = self._path(key)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return StoredFile(data=data, content_type=content_type)

    async def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            found = await asyncio.to_thread(path.stat)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return self._info(key, found) if S_ISREG(found.st_mode) else None

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(self._path(key).open, "rb")
        try:
            await asyncio.to_thread(handle.seek, start)
            left = None if end is None else end - start + 1
            while left is None or left > 0:
                size = CHUNK_BYTES if left is None else min(CHUNK_BYTES, left)
                chunk = await asyncio.to_thread(handle.read, size)
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk
        finally:
            handle.close()

    async def iterate(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        top = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        found = await asyncio.to_thread(self._walk, top)
        for key, stat in found:
            yield self._info(key, stat)

    def _walk(self, top: Path) -> list[tuple[str, os.stat_result]]:
        found = []
        for folder, _dirs, names in os.walk(top):
            for name in names:
                path = Path(folder, name)
                with contextlib.suppress(FileNotFoundError):
                    found.append((path.relative_to(self.root).as_posix(), path.stat()))
        return found

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, self._path(key))

    def _delete(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        # Prune folders left empty; one that is not empty (or gone) ends the climb.
        folder = path.parent
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    async def presigned_url(self, key: str, expires_in_s: int) -> str | None:
        return None

    async def ping(self) -> None:
        await asyncio.to_thread(self._check_writable)

    def _check_writable(self) -> None:
        # Made on first use by a write; a fresh server is ready before its first file.
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write to {self.root}")

    async def aclose(self) -> None:
        return None

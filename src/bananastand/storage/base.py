"""The storage interface: put bytes under a key, stream them back, list and delete them.

Keys are relative, slash-separated paths made by us (never taken raw from a client), such
as ``results/task_x/AbC.png`` or ``uploads/acct_x/images/cat.png``. Links to stored files
are always our own URLs (``storage.links``); a backend never hands out its own, except
the operator's opt-in presigned redirect.

Files are streamed both ways in chunks, so a 30 MB image never sits in memory whole on
its way in or out. Every backend passes the same suite (``tests/test_storage.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

#: The chunk size backends read and write with.
CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class StoredFile:
    data: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # a strong validator, quoted as HTTP wants it
    modified_ms: int  # last write, epoch ms: what retention counts from
    content_type: str


class Storage(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store durably; returns only when a crash can no longer lose the file."""
        ...

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], content_type: str
    ) -> ObjectInfo:
        """Store chunk by chunk; readers see the whole file or none of it. If ``chunks``
        raises, nothing is stored and the error propagates."""
        ...

    async def get(self, key: str) -> StoredFile | None:
        """The whole file, or None when there is none under that key."""
        ...

    async def stat(self, key: str) -> ObjectInfo | None: ...

    def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes ``start`` to ``end`` (inclusive; None: to the end), in chunks.

        Call `stat` first: a key that vanished meanwhile raises FileNotFoundError.
        """
        ...

    def iterate(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every file whose key starts with ``prefix`` (a folder, ending in ``/``)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the file; a missing one is no error (sweepers race each other)."""
        ...

    async def presigned_url(self, key: str, expires_in_s: int) -> str | None:
        """A URL of the backend itself, or None where it has none (local disk)."""
        ...

    async def ping(self) -> None:
        """Raise unless the backend can be reached now (readiness: ``/readyz``)."""
        ...

    async def aclose(self) -> None: ...

"""The storage interface: put bytes under a key, read them back, delete them.

Keys are relative, slash-separated paths made by us (never by a client), such as
``results/task_x/AbC.png``. Links to stored files are always our own URLs; a backend never
hands out its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredFile:
    data: bytes
    content_type: str


class Storage(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store durably; returns only when a crash can no longer lose the file."""
        ...

    async def get(self, key: str) -> StoredFile | None:
        """The file, or None when there is none under that key."""
        ...

    async def delete(self, key: str) -> None: ...

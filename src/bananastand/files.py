"""Files of an account: uploads, signed links to them and to results, fresh links on demand.

Each account's uploads live under ``uploads/<account_id>/<uploadPath>/<fileName>``; the
account id comes from the key, never from the client, and ``uploadPath``/``fileName`` pass
`clean_upload_path`/`clean_file_name` first, so no name can reach outside that folder.
Results live under ``results/<task_id>/``; their owner is the task's account.

Uploads are images (they exist to be passed as ``image_input``): the type is decided by
magic bytes and the stored name carries the matching extension, which is also what the
link serves as ``Content-Type``.
"""

from __future__ import annotations

import enum
import logging
import unicodedata
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Final

from bananastand.errors import ValidationError
from bananastand.fetch import FetchError, SafeFetcher
from bananastand.ids import random_token
from bananastand.image_types import EXTENSIONS, SNIFF_BYTES, sniff_image_type
from bananastand.records import ApiKey
from bananastand.settings import Settings
from bananastand.storage.base import ObjectInfo, Storage
from bananastand.storage.links import LinkSigner
from bananastand.store.ports import TaskStore
from bananastand.thumbnails import Thumbnails

log = logging.getLogger(__name__)

UPLOADS: Final = "uploads/"
RESULTS: Final = "results/"

_ALIASES: Final = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                   ".jpe": "image/jpeg", ".webp": "image/webp"}  # fmt: skip
#: Characters refused in names besides controls and invisible formatting: path separators
#: of any system and what Windows or shells treat specially.
_FORBIDDEN: Final = frozenset('/\\:*?"<>|')
#: Unicode categories refused: controls, format (RTL overrides, zero-width), surrogates,
#: private use, unassigned, line and paragraph separators.
_FORBIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_MAX_NAME_BYTES: Final = 200
_MAX_PATH_CHARS: Final = 512
_MAX_DEPTH: Final = 8


def _clean_segment(raw: str, field: str) -> str:
    name = unicodedata.normalize("NFKC", raw)
    if not name:
        raise ValidationError(f"{field}: empty name")
    if name.startswith(".") or name != name.strip():
        raise ValidationError(f"{field}: a name may not start with a dot or a space")
    if len(name.encode()) > _MAX_NAME_BYTES:
        raise ValidationError(f"{field}: a name may be at most {_MAX_NAME_BYTES} bytes")
    for char in name:
        if char in _FORBIDDEN or unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise ValidationError(f"{field}: the character {char!r} is not allowed in a name")
    return name


def clean_upload_path(raw: str) -> str:
    """``raw`` as a relative folder inside the account's space, or 422.

    Normalised first (NFKC turns fullwidth dots and slashes into ``.`` and ``/``), then
    checked segment by segment: no absolute paths, no ``..``, no hidden names, no empty
    segments, no invisible or control characters. A trailing slash is fine.
    """
    path = unicodedata.normalize("NFKC", raw)
    if path.startswith("/") or path.startswith("\\"):
        raise ValidationError("uploadPath: must be a relative path")
    path = path.removesuffix("/")
    if not path:
        return ""
    if len(path) > _MAX_PATH_CHARS:
        raise ValidationError(f"uploadPath: at most {_MAX_PATH_CHARS} characters")
    segments = path.split("/")
    if len(segments) > _MAX_DEPTH:
        raise ValidationError(f"uploadPath: at most {_MAX_DEPTH} folders deep")
    return "/".join(_clean_segment(segment, "uploadPath") for segment in segments)


def clean_file_name(raw: str, mime_type: str) -> str:
    """``raw`` as one safe name whose extension matches ``mime_type``, or 422."""
    name = _clean_segment(raw, "fileName")
    suffix = PurePosixPath(name).suffix.lower()
    if _ALIASES.get(suffix) != mime_type:
        stem = name[: -len(suffix)] if suffix in _ALIASES else name
        name = _clean_segment(stem + EXTENSIONS[mime_type], "fileName")
    return name


@dataclass(frozen=True, slots=True)
class UploadedFile:
    file_name: str
    file_path: str
    url: str
    size: int
    mime_type: str
    uploaded_at_ms: int

    def to_data(self) -> dict[str, Any]:
        uploaded = datetime.fromtimestamp(self.uploaded_at_ms / 1000, UTC)
        return {
            "fileName": self.file_name,
            "filePath": self.file_path,
            "downloadUrl": self.url,
            "fileUrl": self.url,
            "fileSize": self.size,
            "mimeType": self.mime_type,
            "uploadedAt": uploaded.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }


class Files:
    def __init__(
        self,
        tasks: TaskStore,
        settings: Settings,
        storage: Storage,
        links: LinkSigner,
        fetcher: SafeFetcher,
    ) -> None:
        self._tasks = tasks
        self._settings = settings
        self.storage = storage
        self.links = links
        self._fetcher = fetcher
        self._thumbnails = Thumbnails(storage)

    # ------------------------------------------------------------------ uploads

    async def upload_stream(
        self, key: ApiKey, upload_path: str, file_name: str, chunks: AsyncIterator[bytes]
    ) -> UploadedFile:
        """Store an image arriving in chunks, never holding it whole."""
        limit = self._settings.max_upload_bytes
        head = b""
        async for chunk in chunks:
            head += chunk
            if len(head) >= SNIFF_BYTES:
                break
        mime_type = _sniff(head)

        async def capped() -> AsyncIterator[bytes]:
            size = len(head)
            if size > limit:
                raise _too_large(limit)
            yield head
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                yield chunk

        return await self._store(key, upload_path, file_name, mime_type, capped())

    async def upload_bytes(
        self, key: ApiKey, upload_path: str, file_name: str, data: bytes, *, limit: int
    ) -> UploadedFile:
        if len(data) > limit:
            raise _too_large(limit)
        mime_type = _sniff(data[:SNIFF_BYTES])

        async def whole() -> AsyncIterator[bytes]:
            yield data

        return await self._store(key, upload_path, file_name, mime_type, whole())

    async def upload_url(
        self, key: ApiKey, upload_path: str, file_name: str, url: str
    ) -> UploadedFile:
        """Fetch an image through the SSRF-safe client, then store it.

        Our own links are read from storage, as ``image_input`` reads them: the server may
        not reach its own public address (a loopback one is refused as any private one).
        Another account's file is as unknown as a missing one."""
        if self.links.is_ours(url):
            storage_key = self.links.parse(url)
            if storage_key is None:
                raise ValidationError("fileUrl: the link is expired or not one this server made")
            if not await self._has_own(key.account_id, storage_key):
                raise ValidationError("fileUrl: no such file on this server")
            name = file_name or PurePosixPath(storage_key).name
            return await self.upload_stream(key, upload_path, name, self.storage.open(storage_key))
        try:
            fetched = await self._fetcher.fetch_image(url)
        except FetchError as exc:
            raise ValidationError(f"fileUrl: {exc.message}") from None
        name = file_name or PurePosixPath(fetched.url.split("?")[0]).name
        return await self.upload_bytes(
            key, upload_path, name, fetched.data, limit=self._settings.max_upload_bytes
        )

    async def _has_own(self, account_id: str, storage_key: str) -> bool:
        """Whether the account's file ``storage_key`` exists."""
        if not await self._owns(account_id, storage_key):
            return False
        try:
            return await self.storage.stat(storage_key) is not None
        except ValueError:  # a key that would escape the storage root
            return False

    async def _store(
        self,
        key: ApiKey,
        upload_path: str,
        file_name: str,
        mime_type: str,
        chunks: AsyncIterable[bytes],
    ) -> UploadedFile:
        folder = clean_upload_path(upload_path)
        name = clean_file_name(file_name or random_token(16), mime_type)
        file_path = f"{folder}/{name}" if folder else name
        storage_key = f"{UPLOADS}{key.account_id}/{file_path}"
        info = await self.storage.put_stream(storage_key, chunks, mime_type)
        log.info(
            "file uploaded",
            extra={"account_id": key.account_id, "storage_key": storage_key, "size": info.size},
        )
        expires_at = info.modified_ms // 1000 + self._settings.upload_retention_seconds
        return UploadedFile(
            file_name=name,
            file_path=file_path,
            url=self.links.url(storage_key, expires_at),
            size=info.size,
            mime_type=mime_type,
            uploaded_at_ms=info.modified_ms,
        )

    # ------------------------------------------------------------------ links

    async def fresh_link(self, key: ApiKey, url: str) -> str:
        """A new short-lived link for one of the account's own files, expired links
        included; anything else is 422."""
        storage_key = self.links.parse(url, allow_expired=True)
        if storage_key is None:
            raise ValidationError("url: not a file link of this server")
        if not await self._owns(key.account_id, storage_key):
            raise ValidationError("url: not a file of this account")
        if await self.storage.stat(storage_key) is None:
            raise ValidationError("url: the file no longer exists")
        return self.links.url_for(storage_key, self._settings.download_link_seconds)

    async def _owns(self, account_id: str, storage_key: str) -> bool:
        if storage_key.startswith(UPLOADS):
            return storage_key.startswith(f"{UPLOADS}{account_id}/")
        if storage_key.startswith(RESULTS):
            task_id = storage_key.removeprefix(RESULTS).split("/", 1)[0]
            task = await self._tasks.get_task(task_id, account_id)
            return task is not None
        return False

    async def open_link(
        self, expires: str, signature: str, storage_key: str
    ) -> OpenedFile | LinkRefusal:
        """The file a link points to and the seconds the link has left, or why not.

        Checked in this order, so that only an authentic link learns anything about the
        file: the signature (a forged link cannot tell a missing file from a present one),
        then the expiry, then whether the file still exists. A result's preview that
        does not exist yet is made now (``thumbnails``), from the result if it still is.
        """
        expires_at = self.links.signed_expiry(expires, signature, storage_key)
        if expires_at is None:
            return LinkRefusal.FORGED
        left = self.links.seconds_left(expires_at)
        if left <= 0:
            return LinkRefusal.EXPIRED
        try:
            info = await self.storage.stat(storage_key)
        except ValueError:  # a key that would escape the storage root
            return LinkRefusal.MISSING
        if info is None and storage_key.startswith(RESULTS):
            info = await self._thumbnails.make(storage_key)  # a preview's first request
        return LinkRefusal.MISSING if info is None else OpenedFile(info, left)


class LinkRefusal(enum.Enum):
    """Why a link serves no file."""

    #: Not signed by us: forged, tampered with, or signed with another secret.
    FORGED = "forged"
    EXPIRED = "expired"
    #: An authentic link whose file is gone (deleted by retention).
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class OpenedFile:
    info: ObjectInfo
    seconds_left: int


def _sniff(head: bytes) -> str:
    mime_type = sniff_image_type(head)
    if mime_type is None:
        what = "empty" if not head else "not a PNG, JPEG or WebP image"
        raise ValidationError(f"file: {what}")
    return mime_type


def _too_large(limit: int) -> ValidationError:
    return ValidationError(f"file: larger than {limit} bytes")

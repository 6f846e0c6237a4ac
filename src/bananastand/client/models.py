"""Typed records of the contract as the client reads them.

The enums and ``TaskRecord`` come from ``bananastand.contract``, which imports nothing but
pydantic, so server and client cannot drift apart on the wire shapes.
"""

from __future__ import annotations

import json
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from bananastand.contract import AspectRatio, OutputFormat, Resolution, TaskRecord, TaskState
from bananastand.image_types import EXTENSIONS

__all__ = [
    "AspectRatio",
    "Image",
    "OutputFormat",
    "Resolution",
    "Result",
    "Task",
    "TaskState",
    "UploadedFile",
]


class Task(TaskRecord):
    """``data`` of recordInfo. ``param`` and ``resultJson`` stay the JSON strings they are
    on the wire; ``result_urls`` and ``request`` decode them."""

    model_config = ConfigDict(extra="ignore")

    @property
    def is_final(self) -> bool:
        return self.state.is_final

    @property
    def result_urls(self) -> list[str]:
        if not self.resultJson:
            return []
        urls = json.loads(self.resultJson).get("resultUrls") or []
        return [str(url) for url in urls]

    @property
    def request(self) -> dict[str, Any]:
        """The createTask body this task was made from."""
        decoded: dict[str, Any] = json.loads(self.param) if self.param else {}
        return decoded


class UploadedFile(BaseModel):
    """``data`` of the upload endpoints; ``downloadUrl`` goes into ``image_input``."""

    model_config = ConfigDict(extra="ignore")

    fileName: str
    filePath: str
    downloadUrl: str
    fileUrl: str = ""
    fileSize: int = 0
    mimeType: str = ""
    uploadedAt: str = ""


@dataclass(frozen=True)
class Image:
    """One result image as downloaded."""

    url: str
    data: bytes
    mime_type: str

    @property
    def extension(self) -> str:
        return EXTENSIONS.get(self.mime_type) or mimetypes.guess_extension(self.mime_type) or ""


@dataclass(frozen=True)
class Result:
    """What ``generate()`` returns: the final task record and its images."""

    task: Task
    images: list[Image] = field(default_factory=list)

    def save(self, directory: str | Path, *, stem: str | None = None) -> list[Path]:
        """Write each image as ``<stem>[-N].<ext>`` (stem: the taskId) and return the paths."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        base = stem or self.task.taskId
        paths = []
        for index, image in enumerate(self.images):
            suffix = f"-{index + 1}" if len(self.images) > 1 else ""
            path = folder / f"{base}{suffix}{image.extension}"
            path.write_bytes(image.data)
            paths.append(path)
        return paths

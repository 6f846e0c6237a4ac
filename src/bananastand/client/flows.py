"""The client's operations, each written once as a flow (see ``actions``) that both
``Client`` and ``AsyncClient`` drive: credits, records, cancel, uploads, createTask, the
wait (``waiting``), downloads, and ``generate``, which chains them."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias, TypedDict, Unpack

import httpx

from bananastand.client.actions import Flow
from bananastand.client.answers import media_type, read_image, task_record
from bananastand.client.defaults import DEFAULT_WAIT_TIMEOUT_S
from bananastand.client.errors import TransportError
from bananastand.client.models import Image, Result, Task, UploadedFile
from bananastand.client.pacing import Replay
from bananastand.client.session import USER_AGENT, Session
from bananastand.client.waiting import UpdateHook, wait
from bananastand.image_types import EXTENSIONS

DEFAULT_MODEL = "nano-banana-pro"
DEFAULT_UPLOAD_PATH = "bananastand-client"

ImageSource: TypeAlias = str | os.PathLike[str] | bytes


def is_url(source: ImageSource) -> bool:
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def task_input(
    prompt: str,
    image_urls: Sequence[str],
    *,
    aspect_ratio: str | None,
    resolution: str | None,
    output_format: str | None,
) -> dict[str, Any]:
    """createTask's ``input``; fields left ``None`` are left out (the server's defaults)."""
    fields: dict[str, Any] = {"prompt": prompt}
    if image_urls:
        fields["image_input"] = list(image_urls)
    for name, value in (
        ("aspect_ratio", aspect_ratio),
        ("resolution", resolution),
        ("output_format", output_format),
    ):
        if value is not None:
            fields[name] = str(value)
    return fields


def create_body(
    input_fields: Mapping[str, Any],
    *,
    model: str | None,
    callback_url: str | None,
    lane: str | None = None,
) -> dict[str, Any]:
    """``lane``: bananastand's extension field (``now`` or ``batch``); left out when None,
    so hosted servers, which do not know it, get the body they expect."""
    body: dict[str, Any] = {"model": model or DEFAULT_MODEL, "input": dict(input_fields)}
    if callback_url:
        body["callBackUrl"] = callback_url
    if lane is not None:
        body["lane"] = lane
    return body


class SubmitOptions(TypedDict, total=False):
    """createTask's options; those left out are the server's defaults."""

    aspect_ratio: str | None
    resolution: str | None
    output_format: str | None
    model: str | None
    callback_url: str | None
    idempotency_key: str | None
    #: ``"batch"``: run through the upstream's Batch API, within a day, at the batch price.
    lane: str | None


class GenerateOptions(SubmitOptions, total=False):
    timeout: float
    on_update: UpdateHook | None


class Core(Session):
    """A session's operations as flows: what ``Client`` and ``AsyncClient`` hold and drive
    (a wait is ``waiting.wait`` on the same session)."""

    def credits(self) -> Flow[float]:
        reply = yield from self.call(
            self.request("GET", "/api/v1/chat/credit"), Replay.ANY_TRANSIENT
        )
        return float(reply.data)

    def get(self, task_id: str) -> Flow[Task]:
        reply = yield from self.record_info(task_id)
        return task_record(reply.data)

    def cancel(self, task_id: str) -> Flow[Task]:
        request = self.request("POST", "/api/v1/jobs/cancel", json={"taskId": task_id})
        reply = yield from self.call(request, Replay.REFUSALS)
        return task_record(reply.data)

    def upload(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        upload_path: str = DEFAULT_UPLOAD_PATH,
        file_name: str | None = None,
    ) -> Flow[UploadedFile]:
        """Upload a local file or bytes. The default name is the content's hash, so sending
        it again overwrites the same file: uploads are safe to retry."""
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        mime = media_type(data)
        name = file_name or hashlib.sha256(data).hexdigest()[:32] + EXTENSIONS.get(mime, "")
        request = self.request(
            "POST",
            "/api/file-stream-upload",
            files={"file": (name, data, mime)},
            data={"uploadPath": upload_path, "fileName": name},
        )
        reply = yield from self.call(request, Replay.ANY_TRANSIENT)
        return UploadedFile.model_validate(reply.data)

    def image_urls(self, images: Sequence[ImageSource]) -> Flow[list[str]]:
        """URLs as they are; local paths and bytes uploaded first."""
        urls = []
        for source in images:
            if is_url(source):
                urls.append(str(source))
            else:
                uploaded = yield from self.upload(source)
                urls.append(uploaded.downloadUrl)
        return urls

    def create(
        self, body: Mapping[str, Any], idempotency_key: str | None, *, resend_lost: bool = True
    ) -> Flow[str]:
        """createTask. Sent again after a lost answer (network error, 500) only under an
        ``Idempotency-Key`` (the server then answers with the same task) and ``resend_lost``;
        otherwise only after a refusal (429, 455), which proves nothing was made."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        replay = Replay.ANY_TRANSIENT if idempotency_key and resend_lost else Replay.REFUSALS
        request = self.request("POST", "/api/v1/jobs/createTask", json=body, headers=headers)
        reply = yield from self.call(request, replay)
        if not isinstance(reply.data, dict) or not isinstance(reply.data.get("taskId"), str):
            raise TransportError("createTask answered without a taskId")
        return str(reply.data["taskId"])

    def submit(
        self,
        prompt: str,
        images: Sequence[ImageSource] = (),
        *,
        aspect_ratio: str | None = None,
        resolution: str | None = None,
        output_format: str | None = None,
        model: str | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        lane: str | None = None,
    ) -> Flow[str]:
        urls = yield from self.image_urls(images)
        fields = task_input(
            prompt,
            urls,
            aspect_ratio=aspect_ratio,
            resolution=resolution,
            output_format=output_format,
        )
        body = create_body(fields, model=model, callback_url=callback_url, lane=lane)
        return (yield from self.create(body, idempotency_key))

    def download(self, url: str) -> Flow[Image]:
        """A result link: a plain GET, without the API key (the link is the credential)."""
        request = httpx.Request("GET", url, headers={"User-Agent": USER_AGENT})
        return (yield from self.exchange(request, Replay.ANY_TRANSIENT, partial(read_image, url)))

    def finish(self, task: Task) -> Flow[Result]:
        images = []
        for url in task.result_urls:
            images.append((yield from self.download(url)))
        return Result(task=task, images=images)

    def generate(
        self,
        prompt: str,
        images: Sequence[ImageSource] = (),
        *,
        timeout: float = DEFAULT_WAIT_TIMEOUT_S,
        on_update: UpdateHook | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Flow[Result]:
        options["idempotency_key"] = options.get("idempotency_key") or str(uuid.uuid4())
        task_id = yield from self.submit(prompt, images, **options)
        task = yield from wait(
            self, task_id, timeout=timeout, on_update=on_update, just_created=True
        )
        return (yield from self.finish(task))

"""Google's Batch API for the batch lane, through google-genai's ``client.aio.batches``.

A job carries the generateContent requests of some tasks of one model, keyed by task id:
inline while the job's body stays under the inline limit (Google takes 20 MB), else as a
JSONL file (``{"key", "request"}`` a line) uploaded through the Files API. A job is created
with a display name of the caller's; `GoogleBatches.find` finds it again by that name,
which is what makes creating a job safe to repeat after a crash. Once the job has
succeeded, each task's answer becomes its image or its failure, as the synchronous
provider reads them (thought images skipped, safety blocks, per-request errors).

Vertex AI's batch jobs read and write Cloud Storage or BigQuery: not supported here.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from bananastand import imaging
from bananastand.contract import AspectRatio
from bananastand.errors import InputError, TaskFailure, UpstreamError
from bananastand.providers.base import GeneratedImage
from bananastand.providers.batch_base import BatchItem, ItemResult, JobProgress, JobState
from bananastand.providers.google import GEMINI_LIMITS, token_usage
from bananastand.providers.google_answers import pick_image
from bananastand.settings import ModelSpec

__all__ = ["GoogleBatches"]

log = logging.getLogger(__name__)

#: gRPC codes (``google.rpc.Status``) of a request that was the caller's fault, and the
#: HTTP statuses that say the same: the task fails with 400, as the now lane's would.
_CALLERS_FAULT = frozenset({3, 9, 11, 400})
_OPEN = frozenset({"JOB_STATE_PENDING", "JOB_STATE_QUEUED", "JOB_STATE_RUNNING"})
_LISTED_PER_PAGE = 100


class GoogleBatches:
    """The Batch API of one Gemini API upstream (``name``)."""

    def __init__(
        self,
        name: str,
        client: genai.Client,
        models: Mapping[str, ModelSpec],
        *,
        inline_limit_bytes: int,
        upstream_model: str = "",
    ) -> None:
        """``upstream_model``: the model id sent for every job (empty: the model's
        ``upstream_id``), as the upstream's table says."""
        self.name = name
        self._client = client
        self._models = dict(models)
        self._inline_limit = inline_limit_bytes
        self._upstream_model = upstream_model

    @classmethod
    def gemini(
        cls,
        name: str,
        api_key: str,
        models: Mapping[str, ModelSpec],
        *,
        base_url: str = "",
        timeout_s: float = 300.0,
        inline_limit_bytes: int,
        upstream_model: str = "",
    ) -> GoogleBatches:
        options = types.HttpOptions(base_url=base_url or None, timeout=int(timeout_s * 1000))
        client = genai.Client(api_key=api_key, http_options=options)
        return cls(
            name,
            client,
            models,
            inline_limit_bytes=inline_limit_bytes,
            upstream_model=upstream_model,
        )

    async def aclose(self) -> None:
        await self._client.aio.aclose()

    def upstream_model(self, model: str) -> str:
        return self._upstream_model or self._models[model].upstream_id

    async def submit(self, model: str, display_name: str, items: Sequence[BatchItem]) -> str:
        """Create the job; its name (``batches/...``). Raises the SDK's ``APIError``."""
        prepared = [await asyncio.to_thread(self._prepare, item) for item in items]
        lines = [
            _jsonl_line(item.key, contents, config)
            for item, (contents, config) in zip(items, prepared, strict=True)
        ]
        size = sum(len(line) for line in lines)
        config = types.CreateBatchJobConfig(display_name=display_name)
        src: Any
        if size <= self._inline_limit:
            src = [
                types.InlinedRequest(contents=contents, config=gen, metadata={"key": item.key})
                for item, (contents, gen) in zip(items, prepared, strict=True)
            ]
        else:
            data = "".join(lines).encode()
            uploaded = await self._client.aio.files.upload(
                file=io.BytesIO(data),
                config=types.UploadFileConfig(
                    mime_type="application/jsonl", display_name=display_name
                ),
            )
            src = uploaded.name
            log.info("batch job requests sent as a file", extra={"bytes": len(data)})
        job = await self._client.aio.batches.create(
            model=self.upstream_model(model), src=src, config=config
        )
        if not job.name:
            raise UpstreamError("Google created a batch job without a name")
        return job.name

    async def find(self, display_name: str) -> str | None:
        """The job created with ``display_name``, if Google has one (newest first)."""
        pager = await self._client.aio.batches.list(
            config=types.ListBatchJobsConfig(page_size=_LISTED_PER_PAGE)
        )
        async for job in pager:
            if job.display_name == display_name and job.name:
                return job.name
        return None

    async def state(self, job_name: str) -> JobState:
        job = await self._client.aio.batches.get(name=job_name)
        state = job.state.value if job.state else "JOB_STATE_UNSPECIFIED"
        if state == "JOB_STATE_SUCCEEDED":
            return JobState(JobProgress.SUCCEEDED, state)
        if state in _OPEN or state == "JOB_STATE_UNSPECIFIED":
            return JobState(JobProgress.OPEN, state)
        return JobState(JobProgress.ENDED, state)

    async def cancel(self, job_name: str) -> None:
        try:
            await self._client.aio.batches.cancel(name=job_name)
        except genai_errors.APIError as exc:
            log.warning("cancelling batch job %s failed: %s", job_name, exc)

    async def results(self, job_name: str, keys: Sequence[str]) -> list[ItemResult]:
        """Each task's outcome in a job that succeeded; ``keys``: the job's task ids in
        the order sent (inline answers come in that order, and name their key too)."""
        job = await self._client.aio.batches.get(name=job_name)
        dest = job.dest
        answers: list[tuple[str, types.GenerateContentResponse | None, Any]] = []
        if dest is not None and dest.inlined_responses is not None:
            for index, inlined in enumerate(dest.inlined_responses):
                key = (inlined.metadata or {}).get("key") or (
                    keys[index] if index < len(keys) else ""
                )
                answers.append((key, inlined.response, inlined.error))
        elif dest is not None and dest.file_name:
            data = await self._client.aio.files.download(file=dest.file_name)
            for line in data.splitlines():
                if line.strip():
                    answers.append(_file_answer(json.loads(line)))
        found = {key: _result(key, response, error) for key, response, error in answers}
        missing = UpstreamError("Google's batch job returned no answer for this request")
        return [found.get(key) or ItemResult(key, failure=missing) for key in keys]

    def _prepare(self, item: BatchItem) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The request's contents and generation config, as camelCase dicts with raw
        bytes (the SDK's own models take them; the JSONL line encodes them)."""
        request = item.request
        spec = self._models.get(request.model)
        if spec is None:
            raise InputError(f"model {request.model!r} is not configured on this server")
        images = imaging.fit_inputs(
            [(image.data, image.mime_type) for image in request.images],
            per_image=GEMINI_LIMITS.per_image,
            per_request=GEMINI_LIMITS.per_request,
        )
        parts: list[dict[str, Any]] = [{"text": request.prompt}]
        parts += [{"inlineData": {"mimeType": mime, "data": data}} for data, mime in images]
        image_config: dict[str, str] = {}
        if request.aspect_ratio is not AspectRatio.AUTO:
            image_config["aspectRatio"] = request.aspect_ratio.value
        if spec.sends_image_size:
            image_config["imageSize"] = request.resolution.value.upper()
        config = {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": image_config}
        return [{"role": "user", "parts": parts}], config


def _jsonl_line(key: str, contents: list[dict[str, Any]], config: dict[str, Any]) -> str:
    request = {"contents": contents, "generationConfig": config}
    return json.dumps({"key": key, "request": request}, default=_base64) + "\n"


def _base64(value: object) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _file_answer(line: dict[str, Any]) -> tuple[str, types.GenerateContentResponse | None, Any]:
    key = str(line.get("key", ""))
    if "response" in line:
        # The SDK's own reading of a REST answer (base64 bytes, unknown fields dropped).
        response = types.GenerateContentResponse._from_response(
            response=line["response"], kwargs={}
        )
        return key, response, None
    return key, None, line.get("error") or {"message": "no response and no error"}


def _result(key: str, response: types.GenerateContentResponse | None, error: Any) -> ItemResult:
    if error is not None or response is None:
        code = _field(error, "code")
        message = _field(error, "message") or "no message"
        if code in _CALLERS_FAULT:
            failure: TaskFailure = InputError(
                f"Google rejected the request in its batch job: {message}",
                upstream_status=str(code),
            )
        else:
            failure = UpstreamError(
                f"the request failed in Google's batch job ({code}): {message}",
                upstream_status=str(code),
            )
        return ItemResult(key, failure=failure)
    try:
        data, mime_type = pick_image(response)
    except TaskFailure as failure:
        return ItemResult(key, failure=failure)
    usage: dict[str, int | float | str] = {"lane": "batch", **token_usage(response)}
    return ItemResult(key, image=GeneratedImage(data=data, mime_type=mime_type, usage=usage))


def _field(error: Any, name: str) -> Any:
    if isinstance(error, dict):
        return error.get(name)
    return getattr(error, name, None)

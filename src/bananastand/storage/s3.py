"""Files in an S3-compatible bucket (AWS S3, MinIO, R2, Ceph, ...), through boto3.

boto3 is synchronous; every call runs in a worker thread (its clients are thread-safe).
Large files go up as a multipart upload, one part in memory at a time, and come down as
ranged GETs streamed in chunks. Links stay our own URLs: the API streams the object,
because clients download with their Bearer key attached, which presigned URLs reject.
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config
import botocore.exceptions

from bananastand.storage.base import CHUNK_BYTES, ObjectInfo, StoredFile

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

#: The size of one multipart part (S3's minimum is 5 MiB for all parts but the last).
PART_BYTES = 8 * 1024 * 1024

_MISSING = {"404", "NoSuchKey", "NotFound"}


def _is_missing(exc: botocore.exceptions.ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _MISSING


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class S3Storage:
    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        self._bucket = bucket
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        config = botocore.config.Config(
            signature_version="s3v4",
            # Path-style addressing: what self-hosted S3 servers (MinIO, moto) expect.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            max_pool_connections=32,
            retries={"max_attempts": 3, "mode": "standard"},
        )
        self._client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=config,
        )

    def _full(self, key: str) -> str:
        return self._prefix + key

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(
            self._client.put_object,
            Bucket=self._bucket,
            Key=self._full(key),
            Body=data,
            ContentType=content_type,
        )

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], content_type: str
    ) -> ObjectInfo:
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        full = self._full(key)
        try:
            async for chunk in chunks:
                buffer += chunk
                if len(buffer) >= PART_BYTES:
                    if upload_id is None:
                        started = await asyncio.to_thread(
                            self._client.create_multipart_upload,
                            Bucket=self._bucket,
                            Key=full,
                            ContentType=content_type,
                        )
                        upload_id = started["UploadId"]
                    parts.append(await self._upload_part(full, upload_id, len(parts) + 1, buffer))
                    buffer = bytearray()
            if upload_id is None:
                await self.put(key, bytes(buffer), content_type)
            else:
                if buffer:
                    parts.append(await self._upload_part(full, upload_id, len(parts) + 1, buffer))
                await asyncio.to_thread(
                    self._client.complete_multipart_upload,
                    Bucket=self._bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                )
        except BaseException:
            if upload_id is not None:
                await asyncio.to_thread(
                    self._client.abort_multipart_upload,
                    Bucket=self._bucket,
                    Key=full,
                    UploadId=upload_id,
                )
            raise
        info = await self.stat(key)
        if info is None:  # a sweeper cannot have taken it: it is brand new
            raise FileNotFoundError(key)
        return info

    async def _upload_part(
        self, full: str, upload_id: str, number: int, data: bytearray
    ) -> dict[str, Any]:
        answer = await asyncio.to_thread(
            self._client.upload_part,
            Bucket=self._bucket,
            Key=full,
            UploadId=upload_id,
            PartNumber=number,
            Body=bytes(data),
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def get(self, key: str) -> StoredFile | None:
        try:
            answer = await asyncio.to_thread(
                self._client.get_object, Bucket=self._bucket, Key=self._full(key)
            )
        except botocore.exceptions.ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        body = answer["Body"]
        try:
            data = await asyncio.to_thread(body.read)
        finally:
            body.close()
        return StoredFile(data=data, content_type=answer.get("ContentType", ""))

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = await asyncio.to_thread(
                self._client.head_object, Bucket=self._bucket, Key=self._full(key)
            )
        except botocore.exceptions.ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        return ObjectInfo(
            key=key,
            size=head["ContentLength"],
            etag=head["ETag"],
            modified_ms=_ms(head["LastModified"]),
            content_type=head.get("ContentType") or _guess(key),
        )

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        extra: dict[str, Any] = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            answer = await asyncio.to_thread(
                self._client.get_object, Bucket=self._bucket, Key=self._full(key), **extra
            )
        except botocore.exceptions.ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(key) from None
            raise
        body = answer["Body"]
        try:
            while chunk := await asyncio.to_thread(body.read, CHUNK_BYTES):
                yield chunk
        finally:
            body.close()

    async def iterate(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=self._full(prefix)
        )
        iterator = iter(pages)
        while page := await asyncio.to_thread(next, iterator, None):
            for item in page.get("Contents", []):
                key = item["Key"].removeprefix(self._prefix)
                yield ObjectInfo(
                    key=key,
                    size=item["Size"],
                    etag=item["ETag"],
                    modified_ms=_ms(item["LastModified"]),
                    content_type=_guess(key),
                )

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(
            self._client.delete_object, Bucket=self._bucket, Key=self._full(key)
        )

    async def presigned_url(self, key: str, expires_in_s: int) -> str | None:
        url: str = await asyncio.to_thread(
            self._client.generate_presigned_url,
            "get_object",
            Params={"Bucket": self._bucket, "Key": self._full(key)},
            ExpiresIn=expires_in_s,
        )
        return url

    async def ping(self) -> None:
        await asyncio.to_thread(self._client.head_bucket, Bucket=self._bucket)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._client.close)


def _guess(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"

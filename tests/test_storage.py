"""Integration: one suite, every storage backend: local disk, and S3 against moto's real S3
server."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from bananastand.retention import sweep
from bananastand.settings import Settings
from bananastand.storage import open_storage
from bananastand.storage.base import Storage
from bananastand.storage.s3 import PART_BYTES
from conftest import S3Server

pytestmark = pytest.mark.no_database

StorageRun = Callable[[Callable[[Storage], Coroutine[Any, Any, Any]]], Any]


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StorageRun:
    """Runs an async test body against a fresh, empty store of each backend."""
    if request.param == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")
        settings = Settings(data_dir=tmp_path, s3_prefix="pre/fix", **s3.settings(s3.new_bucket()))
    else:
        settings = Settings(data_dir=tmp_path)

    def run(body: Callable[[Storage], Coroutine[Any, Any, Any]]) -> Any:
        async def main() -> Any:
            storage = open_storage(settings)
            try:
                return await body(storage)
            finally:
                await storage.aclose()

        return asyncio.run(main())

    return run


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _read(storage: Storage, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in storage.open(key, start, end)])


def test_put_get_stat_delete(backend: StorageRun) -> None:
    async def body(storage: Storage) -> None:
        assert await storage.get("uploads/a/x.png") is None
        assert await storage.stat("uploads/a/x.png") is None
        await storage.put("uploads/a/x.png", b"\x89PNG data", "image/png")
        stored = await storage.get("uploads/a/x.png")
        assert stored is not None
        assert stored.data == b"\x89PNG data"
        assert stored.content_type == "image/png"
        info = await storage.stat("uploads/a/x.png")
        assert info is not None
        assert info.key == "uploads/a/x.png"
        assert info.size == 9
        assert info.content_type == "image/png"
        assert info.etag.startswith('"')
        assert abs(info.modified_ms - time.time() * 1000) < 60_000
        await storage.delete("uploads/a/x.png")
        assert await storage.get("uploads/a/x.png") is None
        await storage.delete("uploads/a/x.png")  # deleting twice is no error

    backend(body)


def test_streams_in_and_out_in_ranges(backend: StorageRun) -> None:
    # More than one S3 part, with an odd tail: exercises the multipart upload.
    data = os.urandom(PART_BYTES + 123_457)
    pieces = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]

    async def body(storage: Storage) -> None:
        info = await storage.put_stream("results/t/big.jpg", _chunks(*pieces), "image/jpeg")
        assert info.size == len(data)
        assert info.content_type == "image/jpeg"
        assert await _read(storage, "results/t/big.jpg") == data
        assert await _read(storage, "results/t/big.jpg", 10, 19) == data[10:20]
        assert await _read(storage, "results/t/big.jpg", len(data) - 5) == data[-5:]
        assert await _read(storage, "results/t/big.jpg", 0, 0) == data[:1]

    backend(body)


def test_overwrite_replaces_and_changes_the_etag(backend: StorageRun) -> None:
    async def body(storage: Storage) -> None:
        first = await storage.put_stream("uploads/a/same.png", _chunks(b"one"), "image/png")
        time.sleep(0.01)
        second = await storage.put_stream("uploads/a/same.png", _chunks(b"two!"), "image/png")
        assert second.size == 4
        assert second.etag != first.etag
        assert await _read(storage, "uploads/a/same.png") == b"two!"

    backend(body)


def test_a_failing_stream_stores_nothing(backend: StorageRun) -> None:
    big = os.urandom(PART_BYTES + 1)

    async def failing() -> AsyncIterator[bytes]:
        yield big  # past one S3 part: a multipart upload was started and must be aborted
        raise RuntimeError("client went away")

    async def body(storage: Storage) -> None:
        await storage.put("uploads/a/keep.png", b"old", "image/png")
        with pytest.raises(RuntimeError):
            await storage.put_stream("uploads/a/keep.png", failing(), "image/png")
        with pytest.raises(RuntimeError):
            await storage.put_stream("uploads/a/new.png", failing(), "image/png")
        assert await _read(storage, "uploads/a/keep.png") == b"old"
        assert await storage.stat("uploads/a/new.png") is None
        assert [info.key async for info in storage.iterate("uploads/")] == ["uploads/a/keep.png"]

    backend(body)


def test_iterate_lists_by_prefix(backend: StorageRun) -> None:
    async def body(storage: Storage) -> None:
        for key in ("uploads/a/1.png", "uploads/a/d/2.png", "uploads/b/3.png", "results/t/4.png"):
            await storage.put(key, key.encode(), "image/png")
        found = sorted([info.key async for info in storage.iterate("uploads/")])
        assert found == ["uploads/a/1.png", "uploads/a/d/2.png", "uploads/b/3.png"]
        assert [info.key async for info in storage.iterate("results/")] == ["results/t/4.png"]
        assert [info.key async for info in storage.iterate("nothing/")] == []
        sizes = {info.key: info.size async for info in storage.iterate("uploads/a/")}
        assert sizes == {"uploads/a/1.png": 15, "uploads/a/d/2.png": 17}

    backend(body)


def test_presigned_urls_exist_only_where_the_backend_has_them(
    backend: StorageRun, request: pytest.FixtureRequest
) -> None:
    async def body(storage: Storage) -> str | None:
        await storage.put("results/t/x.png", b"x", "image/png")
        return await storage.presigned_url("results/t/x.png", 60)

    url = backend(body)
    if "local" in request.node.callspec.id:
        assert url is None
    else:
        assert url is not None
        assert "X-Amz-Signature" in url


def test_two_concurrent_sweeps_delete_every_expired_file_and_nothing_live(
    backend: StorageRun,
) -> None:
    """Old files are written, then (a second later: S3 keeps whole seconds) live ones; two
    sweeps race with a cutoff between the two."""

    async def body(storage: Storage) -> None:
        old = [f"uploads/acct_{i % 3}/old/{i}.png" for i in range(12)]
        old += [f"results/task_{i}/x.png" for i in range(6)]
        for key in old:
            await storage.put(key, b"old", "image/png")
        await asyncio.sleep(1.1)
        live = [f"uploads/acct_{i % 3}/new/{i}.png" for i in range(6)] + ["results/task_n/x.png"]
        for key in live:
            await storage.put(key, b"live", "image/png")
        newest_old = max([(await storage.stat(k)).modified_ms for k in old])  # type: ignore[union-attr]
        oldest_live = min([(await storage.stat(k)).modified_ms for k in live])  # type: ignore[union-attr]
        assert newest_old < oldest_live
        rules = {"uploads/": 60, "results/": 60}
        now = (newest_old + oldest_live) // 2 + 60_000  # the cutoff falls between the batches
        results = await asyncio.gather(
            sweep(storage, rules, now_ms=now), sweep(storage, rules, now_ms=now)
        )
        assert sum(results) >= len(old)  # each expired file was deleted by some sweep
        left = sorted([info.key async for info in storage.iterate("uploads/")])
        left += [info.key async for info in storage.iterate("results/")]
        assert sorted(left) == sorted(live)

    backend(body)

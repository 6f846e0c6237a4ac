"""Acceptance: the list's ``thumbnailUrl``: a WebP preview of a task's first result, made by
the server on the link's first request, kept in storage beside the result, served from
there afterwards and swept with the result. Real server, real HTTP, real storage (local
disk, and S3 on a real S3 server), the real ``files sweep`` command."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from conftest import S3Server, Server, cli, prompt_body

LIST = "/api/v1/jobs/list"


def listed(server: Server, key: str, **params: Any) -> list[dict[str, Any]]:
    response = server.client.get(LIST, params=params, headers={"Authorization": f"Bearer {key}"})
    answer = response.json()
    assert answer["code"] == 200, answer
    items: list[dict[str, Any]] = answer["data"]["items"]
    return items


def finished(server: Server, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """The list item of a task made from ``body``, once the task has ended."""
    task_id = server.create(key, body)["data"]["taskId"]
    server.wait(key, task_id)
    [item] = [item for item in listed(server, key) if item["taskId"] == task_id]
    return item


def stored(server: Server, item: dict[str, Any]) -> tuple[Path, Path]:
    """Where the task's result and its preview lie in the server's storage folder."""
    [result] = (server.data_dir / "files" / "results" / item["taskId"]).glob("*.png")
    return result, result.with_name(result.name + ".thumb.webp")


def webp_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "WEBP"
        return image.size


def test_the_preview_is_a_small_webp_made_on_first_request_then_served_from_storage(
    server: Server,
) -> None:
    key = server.key()
    item = finished(server, key, prompt_body("a wide banana", aspect_ratio="16:9"))
    assert item["state"] == "success"
    url = item["thumbnailUrl"]
    assert isinstance(url, str)
    assert url.startswith(f"{server.base_url}/files/")
    result, preview = stored(server, item)
    assert not preview.exists()  # not made when the list was served

    response = httpx.get(url, timeout=30)  # as an <img> asks: no Authorization header
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    assert webp_size(response.content) == (256, 143)  # 1376x768, long side 256
    assert preview.read_bytes() == response.content
    made = preview.stat()

    again = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert again.status_code == 200
    assert again.content == response.content
    assert again.headers["etag"] == response.headers["etag"]
    # Served from storage: the very file written the first time, not a new render.
    assert (preview.stat().st_ino, preview.stat().st_mtime_ns) == (made.st_ino, made.st_mtime_ns)
    assert result.exists()
    # The same link on every read of the list.
    assert listed(server, key)[0]["thumbnailUrl"] == url


def test_a_tall_result_gets_a_tall_preview(server: Server) -> None:
    key = server.key()
    item = finished(server, key, prompt_body("tall", aspect_ratio="9:16", output_format="jpg"))
    response = httpx.get(item["thumbnailUrl"], timeout=30)
    assert response.status_code == 200
    assert webp_size(response.content) == (143, 256)


def test_tasks_without_a_result_have_no_preview(start_server: Callable[..., Server]) -> None:
    server = start_server()
    key = server.key()
    failed = finished(server, key, prompt_body("no [sandbox:fail=safety]"))
    assert (failed["state"], failed["thumbnailUrl"]) == ("fail", None)
    idle = start_server(run_worker=False)
    idle_key = idle.key()
    idle.create(idle_key, prompt_body("waits"))
    [waiting] = listed(idle, idle_key)
    assert (waiting["state"], waiting["thumbnailUrl"]) == ("waiting", None)


def test_a_tampered_preview_link_is_403_and_renders_nothing(server: Server) -> None:
    key = server.key()
    item = finished(server, key, prompt_body("guarded"))
    _, preview = stored(server, item)
    base, _, name = item["thumbnailUrl"].rpartition("/")
    for link in (f"{base}/x{name}", item["thumbnailUrl"].replace("/files/", "/files/1")):
        assert httpx.get(link, timeout=30).status_code == 403, link
    assert not preview.exists()


def test_first_requests_at_once_all_get_the_one_whole_preview(server: Server) -> None:
    key = server.key()
    item = finished(server, key, prompt_body("popular", resolution="2K"))
    barrier = threading.Barrier(8)

    def fetch(_index: int) -> httpx.Response:
        barrier.wait(30)
        return httpx.get(item["thumbnailUrl"], timeout=60)

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(fetch, range(8)))
    assert [response.status_code for response in responses] == [200] * 8
    assert len({response.content for response in responses}) == 1
    assert webp_size(responses[0].content) == (256, 256)
    result, preview = stored(server, item)
    assert preview.read_bytes() == responses[0].content
    # Nothing half-written left beside them.
    assert sorted(path.name for path in result.parent.iterdir()) == [result.name, preview.name]


def test_the_sweep_deletes_the_preview_with_its_result(server: Server) -> None:
    key = server.key()
    item = finished(server, key, prompt_body("short-lived"))
    kept = finished(server, key, prompt_body("kept"))
    for made in (item, kept):
        assert httpx.get(made["thumbnailUrl"], timeout=30).status_code == 200
    result, preview = stored(server, item)

    swept = cli(server.data_dir, "files", "sweep")  # nothing has expired yet
    assert swept.returncode == 0, swept.stderr
    assert result.exists()
    assert preview.exists()

    # The result is past its retention; its preview, made later, is not.
    long_ago = time.time() - server.settings.result_retention_seconds - 3600
    os.utime(result, (long_ago, long_ago))
    swept = cli(server.data_dir, "files", "sweep")
    assert swept.returncode == 0, swept.stderr
    assert not result.exists()
    assert not preview.exists()
    # Its live link finds nothing (and makes nothing from nothing); the other task's stays.
    assert httpx.get(item["thumbnailUrl"], timeout=30).status_code == 404
    assert not preview.exists()
    assert all(path.exists() for path in stored(server, kept))
    assert httpx.get(kept["thumbnailUrl"], timeout=30).status_code == 200


def test_previews_on_s3_are_stored_in_the_bucket_and_follow_the_presigned_redirect(
    start_server: Callable[..., Server], s3_server: S3Server
) -> None:
    bucket = s3_server.new_bucket()
    server = start_server(s3_presigned_redirect=True, **s3_server.settings(bucket))
    key = server.key()
    item = finished(server, key, prompt_body("in a bucket", aspect_ratio="3:2"))
    client = s3_server.client()
    try:
        names = {entry["Key"] for entry in client.list_objects_v2(Bucket=bucket)["Contents"]}
        assert not any(name.endswith(".thumb.webp") for name in names)
        redirect = httpx.get(item["thumbnailUrl"], timeout=30)
        assert redirect.status_code == 307
        response = httpx.get(redirect.headers["location"], timeout=30)
        assert response.status_code == 200
        assert webp_size(response.content) == (256, 172)  # 1264x848
        [preview] = [
            entry["Key"]
            for entry in client.list_objects_v2(Bucket=bucket)["Contents"]
            if entry["Key"].endswith(".thumb.webp")
        ]
        assert preview.startswith(f"results/{item['taskId']}/")
        head = client.head_object(Bucket=bucket, Key=preview)
        assert head["ContentType"] == "image/webp"
    finally:
        client.close()


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_results_of_every_format_have_a_preview(server: Server, fmt: str) -> None:
    key = server.key()
    item = finished(server, key, prompt_body("formats", output_format=fmt))
    response = httpx.get(item["thumbnailUrl"], timeout=30)
    assert response.status_code == 200
    assert webp_size(response.content) == (256, 256)

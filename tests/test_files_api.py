"""Acceptance: uploads, signed links, download-url and retention, over real HTTP against a real
server."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from bananastand.storage.links import LinkSigner, load_secret
from conftest import BIN, S3Server, Server, database_env, prompt_body
from waiting import wait_for

STREAM = "/api/file-stream-upload"
URL_UPLOAD = "/api/file-url-upload"
BASE64 = "/api/file-base64-upload"
DOWNLOAD_URL = "/api/v1/common/download-url"
DATA_KEYS = {"fileName", "filePath", "downloadUrl", "fileUrl", "fileSize", "mimeType", "uploadedAt"}


def png(color: str = "red", size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "blue").save(out, format="JPEG")
    return out.getvalue()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def answer_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text[:300]
    answer: dict[str, Any] = response.json()
    assert set(answer) == {"success", "code", "msg", "message", "data"}, answer
    assert answer["msg"] == answer["message"]
    assert answer["success"] is (answer["code"] == 200)
    return answer


def stream_upload(
    server: Server, key: str, data: bytes, *, upload_path: str = "images", **fields: str
) -> dict[str, Any]:
    form = {"uploadPath": upload_path, **fields}
    response = server.client.post(
        STREAM, headers=auth(key), data=form, files={"file": ("photo.png", data, "image/png")}
    )
    return answer_of(response)


def uploaded(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["code"] == 200, answer
    data: dict[str, Any] = answer["data"]
    assert set(data) == DATA_KEYS
    return data


def signer(server: Server) -> LinkSigner:
    """Links made with the server's own secret, as another process of it would."""
    return LinkSigner(load_secret("", server.data_dir), server.settings.effective_public_url)


def account_of(server: Server, key: str) -> str:
    url: str = uploaded(stream_upload(server, key, png(), upload_path="whoami"))["downloadUrl"]
    return url.split("/uploads/")[1].split("/")[0]


# -- the three uploads ----------------------------------------------------------------------


def test_stream_upload_answers_the_contract_and_the_link_serves_the_file(server: Server) -> None:
    key = server.key()
    image = png()
    data = uploaded(stream_upload(server, key, image, upload_path="images/cats"))
    assert data["fileName"] == "photo.png"
    assert data["filePath"] == "images/cats/photo.png"
    assert data["downloadUrl"] == data["fileUrl"]
    assert data["downloadUrl"].startswith(server.base_url + "/files/")
    assert data["fileSize"] == len(image)
    assert data["mimeType"] == "image/png"
    assert data["uploadedAt"].endswith("Z")
    for headers in ({}, {"Authorization": "Bearer nonsense"}, auth(key), {"Authorization": "x"}):
        response = httpx.get(data["downloadUrl"], headers=headers)
        assert response.status_code == 200
        assert response.content == image
        assert response.headers["content-type"] == "image/png"
        assert response.headers["content-length"] == str(len(image))
        assert response.headers["etag"]
        assert response.headers["accept-ranges"] == "bytes"
        assert response.headers["cache-control"].startswith("private, max-age=")
        assert response.headers["last-modified"].endswith("GMT")


def test_file_name_is_optional_and_the_extension_follows_the_bytes(server: Server) -> None:
    key = server.key()
    response = server.client.post(
        STREAM, headers=auth(key), data={"uploadPath": "x"}, files={"file": ("blob", jpeg())}
    )
    data = uploaded(answer_of(response))
    assert data["fileName"] == "blob.jpg"
    assert data["mimeType"] == "image/jpeg"
    # A JPEG named .png is stored, and served, as what it is.
    data = uploaded(stream_upload(server, key, jpeg(), fileName="lies.png"))
    assert data["fileName"] == "lies.jpg"
    assert httpx.get(data["downloadUrl"]).headers["content-type"] == "image/jpeg"


def test_base64_upload_plain_and_data_url(server: Server) -> None:
    key = server.key()
    image = png("green")
    encoded = base64.b64encode(image).decode()
    for payload in (encoded, "data:image/png;base64," + encoded, encoded.rstrip("=")):
        response = server.client.post(
            BASE64,
            headers=auth(key),
            json={"base64Data": payload, "uploadPath": "b64", "fileName": "g.png"},
        )
        data = uploaded(answer_of(response))
        assert data["filePath"] == "b64/g.png"
        assert httpx.get(data["downloadUrl"]).content == image
    for bad in ("not base64 at all!", "", base64.b64encode(b"plain text").decode()):
        response = server.client.post(
            BASE64, headers=auth(key), json={"base64Data": bad, "uploadPath": "b64"}
        )
        answer = answer_of(response)
        assert answer["code"] == 422, answer
        assert answer["data"] is None


@pytest.fixture
def image_host() -> Iterator[str]:
    """A plain HTTP server on loopback with a PNG and a text file."""
    image = png("purple")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, kind = (image, "image/png") if self.path == "/cat.png" else (b"hi", "text/plain")
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_url_upload_fetches_through_the_safe_fetcher(
    start_server: Callable[..., Server], image_host: str
) -> None:
    allowed = start_server(allow_private_networks=["127.0.0.1"])
    key = allowed.key()
    response = allowed.client.post(
        URL_UPLOAD,
        headers=auth(key),
        json={"fileUrl": f"{image_host}/cat.png", "uploadPath": "web", "fileName": "c.png"},
    )
    data = uploaded(answer_of(response))
    assert data["filePath"] == "web/c.png"
    assert httpx.get(data["downloadUrl"]).content == png("purple")
    text = allowed.client.post(
        URL_UPLOAD, headers=auth(key), json={"fileUrl": f"{image_host}/a.txt", "uploadPath": "w"}
    )
    assert answer_of(text)["code"] == 422

    # Without the allow-list, loopback is off limits: SSRF refused, nothing stored.
    strict = start_server()
    response = strict.client.post(
        URL_UPLOAD,
        headers=auth(strict.key()),
        json={"fileUrl": f"{image_host}/cat.png", "uploadPath": "web"},
    )
    answer = answer_of(response)
    assert answer["code"] == 422
    assert "fileUrl" in answer["msg"]
    assert not (strict.data_dir / "files" / "uploads").exists()


def test_uploads_need_a_key_and_answer_success_false(server: Server) -> None:
    for headers in ({}, {"Authorization": "Bearer bs_test_nope"}):
        response = server.client.post(
            STREAM, headers=headers, data={"uploadPath": "x"}, files={"file": ("a.png", png())}
        )
        answer = answer_of(response)
        assert answer["code"] == 401
        assert answer["success"] is False
        response = server.client.post(BASE64, headers=headers, json={"base64Data": "AAAA"})
        assert answer_of(response)["code"] == 401
    assert not (server.data_dir / "files" / "uploads").exists()


def test_a_rate_limited_upload_is_refused_like_any_call_with_success_false(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(read_rate="1/minute")
    key = server.key()
    form = {"data": {"uploadPath": "x"}, "files": {"file": ("a.png", png())}}
    assert answer_of(server.client.post(STREAM, headers=auth(key), **form))["code"] == 200
    upload = server.client.post(STREAM, headers=auth(key), **form)
    read = server.client.get("/api/v1/jobs/recordInfo", headers=auth(key), params={"taskId": "t"})
    refused = answer_of(upload)
    assert (refused["code"], refused["success"]) == (429, False)
    assert {**read.json(), "success": False} == refused
    for answer in (upload, read):
        assert 1 <= int(answer.headers["Retry-After"]) <= 60


def test_refusals(start_server: Callable[..., Server]) -> None:
    server = start_server(max_upload_bytes=50_000, max_base64_upload_bytes=20_000)
    key = server.key()
    cases = [
        {"files": {"file": ("a.png", b"GIF89a not allowed")}},  # wrong type by magic bytes
        {"files": {"file": ("a.png", b"")}},  # empty
        {"files": {"file": ("a.png", b"\x89PNG\r\n\x1a\n" + os.urandom(60_000))}},  # too big
        {"data": {"uploadPath": "x"}},  # no file part
        {"content": b"just bytes", "headers": {"Content-Type": "image/png"}},  # not multipart
    ]
    for case in cases:
        headers = {**auth(key), **case.pop("headers", {})}
        answer = answer_of(server.client.post(STREAM, headers=headers, **case))
        assert answer["code"] == 422, (case, answer)
        assert answer["success"] is False
    big = base64.b64encode(b"\x89PNG\r\n\x1a\n" + os.urandom(30_000)).decode()
    answer = answer_of(server.client.post(BASE64, headers=auth(key), json={"base64Data": big}))
    assert answer["code"] == 422
    assert not list((server.data_dir / "files").rglob("*.png"))


# -- names can never escape the account's space ------------------------------------------------

HOSTILE = [
    {"fileName": "../../../../etc/passwd"},
    {"fileName": ".."},
    {"fileName": "."},
    {"fileName": "/etc/passwd"},
    {"fileName": "..\\..\\win.png"},
    {"fileName": "cat\x00.png"},
    {"fileName": "．．"},  # fullwidth dots: NFKC ".."
    {"fileName": "．．／．．／x.png"},  # fullwidth dots and slash
    {"fileName": "x\u202egnp.exe"},  # right-to-left override
    {"fileName": "x\u200b.png"},  # zero-width space
    {"fileName": "a" * 300 + ".png"},  # overlong
    {"fileName": "line\nbreak.png"},
    {"fileName": ".hidden.png"},
    {"fileName": "%2e%2e%2fescape.png"},  # percent signs are just characters: neutralised
    {"uploadPath": "../other"},
    {"uploadPath": "/abs/path"},
    {"uploadPath": "a/../../b"},
    {"uploadPath": "a//b"},
    {"uploadPath": "C:\\Windows"},
    {"uploadPath": "a/./b"},
    {"uploadPath": "‥/x"},  # two-dot leader
    {"uploadPath": "x/" * 20},  # too deep
    {"uploadPath": "../uploads/acct_other"},
    {"uploadPath": "uploads/acct_other"},  # neutralised: a folder inside the caller's space
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=[repr(h)[:40] for h in HOSTILE])
def test_hostile_names_are_refused_or_kept_inside_the_account(
    shared: Server, hostile: dict[str, str]
) -> None:
    server = shared
    key = server.key()
    account = account_of(server, key)
    fields = {"uploadPath": "safe", "fileName": "ok.png", **hostile}
    root = server.data_dir
    before = _snapshot(root)
    response = server.client.post(
        STREAM, headers=auth(key), data=fields, files={"file": ("f.png", png("orange"))}
    )
    answer = answer_of(response)
    own = root / "files" / "uploads" / account
    changed = [path for path, mtime in _snapshot(root).items() if before.get(path) != mtime]
    # Nothing written anywhere but in the caller's own folder (the database aside).
    assert all(own in path.parents or path.name.startswith("bananastand.db") for path in changed)
    if answer["code"] == 200:
        data = answer["data"]
        stored = own / data["filePath"]
        assert stored.is_file()
        assert stored.resolve().is_relative_to(own.resolve())
        assert httpx.get(data["downloadUrl"]).content == png("orange")
    else:
        assert answer["code"] == 422, answer
        field = "uploadPath" if "uploadPath" in hostile else "fileName"
        assert answer["msg"].startswith(field), answer


def _snapshot(root: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in root.rglob("*") if path.is_file()}


def test_a_reused_name_overwrites_only_the_accounts_own_file(server: Server) -> None:
    alice, bob = server.key(), server.key()
    first = uploaded(stream_upload(server, alice, png("red"), fileName="same.png"))
    theirs = uploaded(stream_upload(server, bob, png("blue"), fileName="same.png"))
    assert first["filePath"] == theirs["filePath"] == "images/same.png"
    assert first["downloadUrl"] != theirs["downloadUrl"]
    assert httpx.get(first["downloadUrl"]).content == png("red")
    again = uploaded(stream_upload(server, alice, png("white"), fileName="same.png"))
    assert httpx.get(again["downloadUrl"]).content == png("white")
    assert httpx.get(theirs["downloadUrl"]).content == png("blue")


# -- links: ranges, HEAD, caching, expiry and tampering -------------------------------------


def test_ranges_head_and_conditional_requests(server: Server) -> None:
    image = png("yellow", (300, 200))
    url = uploaded(stream_upload(server, server.key(), image))["downloadUrl"]
    size = len(image)
    cases = {
        "bytes=0-9": (206, image[:10], f"bytes 0-9/{size}"),
        "bytes=10-": (206, image[10:], f"bytes 10-{size - 1}/{size}"),
        "bytes=-7": (206, image[-7:], f"bytes {size - 7}-{size - 1}/{size}"),
        f"bytes=5-{size + 100}": (206, image[5:], f"bytes 5-{size - 1}/{size}"),
        "bytes=0-1,4-5": (200, image, None),  # several ranges: the whole file
        "items=0-5": (200, image, None),
    }
    for wanted, (status, body, content_range) in cases.items():
        response = httpx.get(url, headers={"Range": wanted})
        assert response.status_code == status, wanted
        assert response.content == body, wanted
        assert response.headers["content-length"] == str(len(body))
        assert response.headers.get("content-range") == content_range
    for unsatisfiable in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
        response = httpx.get(url, headers={"Range": unsatisfiable})
        assert response.status_code == 416, unsatisfiable
        assert response.headers["content-range"] == f"bytes */{size}"

    head = httpx.head(url)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(size)
    assert head.headers["content-type"] == "image/png"
    assert head.content == b""
    etag = head.headers["etag"]
    assert httpx.get(url, headers={"If-None-Match": etag}).status_code == 304
    stale = httpx.get(url, headers={"Range": "bytes=0-3", "If-Range": '"stale"'})
    assert stale.status_code == 200
    assert stale.content == image


def test_links_survive_restarts_and_the_secret_is_private(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    data_dir = tmp_path / "shared"
    first = start_server(data_dir=data_dir, run_worker=False)
    url = uploaded(stream_upload(first, first.key(), png()))["downloadUrl"]
    secret_file = data_dir / "signing-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    second = start_server(data_dir=data_dir, run_worker=False)  # another process, same folder
    # Each process serves the others' links: they share the secret kept in the data folder.
    response = httpx.get(url.replace(first.base_url, second.base_url))
    assert response.status_code == 200
    assert response.content == png()
    assert load_secret("", data_dir) == secret_file.read_text().encode()


def test_processes_starting_at_once_agree_on_the_secret(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        secrets = set(pool.map(lambda _: load_secret("", tmp_path), range(16)))
    assert len(secrets) == 1
    assert len(secrets.pop()) >= 32
    assert [p.name for p in tmp_path.iterdir()] == ["signing-secret"]
    assert load_secret("configured-secret", tmp_path) == b"configured-secret"


# -- download-url -----------------------------------------------------------------------------


def _download_url(server: Server, key: str, url: Any) -> dict[str, Any]:
    response = server.client.post(DOWNLOAD_URL, headers=auth(key), json={"url": url})
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def test_download_url_refreshes_own_links_expired_ones_included(server: Server) -> None:
    alice, bob = server.key(), server.key()
    upload = uploaded(stream_upload(server, alice, png("red")))["downloadUrl"]
    task_id = server.create(alice, prompt_body())["data"]["taskId"]
    record = server.wait(alice, task_id)
    assert record["state"] == "success"
    [result] = json.loads(record["resultJson"])["resultUrls"]
    key = signer(server).parse(upload)
    assert key is not None
    expired_upload = signer(server).url(key, int(time.time()) - 3600)
    assert httpx.get(expired_upload).status_code == 410

    for url in (upload, expired_upload, result):
        answer = _download_url(server, alice, url)
        assert answer["code"] == 200, answer
        fresh = answer["data"]
        assert isinstance(fresh, str)
        assert fresh != url
        expires = int(fresh.split("/files/")[1].split("/")[0])
        assert 0 < expires - time.time() <= 20 * 60 + 5
        response = httpx.get(fresh)
        assert response.status_code == 200
        assert response.content.startswith(b"\x89PNG")

    for url in (
        upload,  # another account's upload
        result,  # another account's result
        upload.replace("/uploads/", "/uploads/x"),  # tampered
        "https://example.com/files/1/abc/uploads/x.png",  # not ours
        "",
        42,
    ):
        answer = _download_url(server, bob, url)
        assert answer["code"] == 422, (url, answer)
    assert _download_url(server, alice, "not a url")["code"] == 422
    no_key = server.client.post(DOWNLOAD_URL, json={"url": upload}).json()
    assert no_key["code"] == 401


# -- the upload used as an image_input ----------------------------------------------------------


def test_an_uploaded_url_works_at_once_as_image_input(server: Server) -> None:
    """No fetch allow-list: the worker reads our own links from storage, not over HTTP."""
    key = server.key()
    url = uploaded(stream_upload(server, key, png("cyan", (300, 200))))["downloadUrl"]
    task_id = server.create(key, prompt_body(image_input=[url], aspect_ratio="auto"))["data"][
        "taskId"
    ]
    record = server.wait(key, task_id)
    assert record["state"] == "success", record
    [result] = json.loads(record["resultJson"])["resultUrls"]
    with Image.open(io.BytesIO(httpx.get(result).content)) as image:
        assert image.width > image.height  # `auto` followed the 3:2 input image

    # A link whose file is gone fails the task as bad input.
    expired_key = signer(server).parse(url)
    assert expired_key is not None
    (server.data_dir / "files" / expired_key).unlink()
    task_id = server.create(key, prompt_body(image_input=[url]))["data"]["taskId"]
    record = server.wait(key, task_id)
    assert record["state"] == "fail"
    assert record["failCode"] == "400"


# -- the S3 backend behind the whole server ---------------------------------------------------


def test_the_server_on_s3(start_server: Callable[..., Server], s3_server: S3Server) -> None:
    server = start_server(**s3_server.settings(s3_server.new_bucket()))
    key = server.key()
    image = png("navy", (200, 100))
    data = uploaded(stream_upload(server, key, image))
    assert not (server.data_dir / "files").exists()
    response = httpx.get(data["downloadUrl"], headers=auth(key))
    assert response.content == image
    assert response.headers["content-type"] == "image/png"
    assert httpx.get(data["downloadUrl"], headers={"Range": "bytes=1-3"}).content == image[1:4]
    task_id = server.create(key, prompt_body(image_input=[data["downloadUrl"]]))["data"]["taskId"]
    record = server.wait(key, task_id)
    assert record["state"] == "success", record
    [result] = json.loads(record["resultJson"])["resultUrls"]
    assert httpx.get(result).content.startswith(b"\x89PNG")
    assert _download_url(server, key, result)["code"] == 200


def test_presigned_redirect_is_an_opt_in(
    start_server: Callable[..., Server], s3_server: S3Server
) -> None:
    server = start_server(
        run_worker=False, s3_presigned_redirect=True, **s3_server.settings(s3_server.new_bucket())
    )
    url = uploaded(stream_upload(server, server.key(), png()))["downloadUrl"]
    response = httpx.get(url)
    assert response.status_code == 307
    assert "X-Amz-Signature" in response.headers["location"]
    assert httpx.get(response.headers["location"]).content == png()


# -- retention -------------------------------------------------------------------------------


def test_files_sweep_command_deletes_only_expired_files_from_two_processes(
    server: Server, tmp_path: Path
) -> None:
    key = server.key()
    old = [uploaded(stream_upload(server, key, png(), fileName=f"o{i}.png")) for i in range(5)]
    new = uploaded(stream_upload(server, key, png(), fileName="new.png"))
    files = server.data_dir / "files"
    four_days_ago = time.time() - 4 * 86400
    for data in old:
        [path] = files.rglob(data["fileName"])
        os.utime(path, (four_days_ago, four_days_ago))
    env = {
        **os.environ,
        "BANANASTAND_DATA_DIR": str(server.data_dir),
        **database_env(server.data_dir),
        "BANANASTAND_LOG_LEVEL": "WARNING",
    }
    sweepers = [
        subprocess.Popen(
            [str(BIN / "bananastand"), "files", "sweep"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [sweeper.communicate(timeout=60) for sweeper in sweepers]
    assert [sweeper.returncode for sweeper in sweepers] == [0, 0], outputs
    counts = [int(out.decode().split()[1]) for out, _ in outputs]
    assert sum(counts) >= 5
    assert [p.name for p in files.rglob("*") if p.is_file()] == ["new.png"]
    for data in old:
        assert httpx.get(data["downloadUrl"]).status_code == 404  # live links, files gone
    assert httpx.get(new["downloadUrl"]).status_code == 200


# -- memory: large files stream -----------------------------------------------------------------


def test_a_30_mb_upload_and_download_stream_through_bounded_memory(server: Server) -> None:
    size = 30 * 1024 * 1024
    content = b"\x89PNG\r\n\x1a\n" + os.urandom(size - 8)
    expected = hashlib.sha256(content).hexdigest()
    source = io.BytesIO(content)
    digest = hashlib.sha256()
    key = server.key()
    tracemalloc.start()
    try:
        response = server.client.post(
            STREAM, headers=auth(key), data={"uploadPath": "big"}, files={"file": ("b.png", source)}
        )
        data = uploaded(answer_of(response))
        received = 0
        with httpx.stream("GET", data["downloadUrl"], timeout=60) as download:
            for chunk in download.iter_raw():
                received += len(chunk)
                digest.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert data["fileSize"] == size
    assert received == size
    # The test's own source file is one copy (30 MB); the server adds chunks, not copies.
    assert digest.hexdigest() == expected
    # Far below one copy of the file: the server holds chunks, never the file (the test's
    # own source buffer was allocated before tracing started).
    assert peak < size // 3, peak


def test_workers_sweep_expired_uploads_on_their_own(start_server: Callable[..., Server]) -> None:
    server = start_server(lease_seconds=0.6, sweep_interval_seconds=0.2, upload_retention_seconds=1)
    data = uploaded(stream_upload(server, server.key(), png()))
    [path] = (server.data_dir / "files").rglob("photo.png")
    wait_for(lambda: not path.exists(), what="the worker swept the expired upload", interval=0.1)
    assert httpx.get(data["downloadUrl"]).status_code == 410  # swept once its link expired

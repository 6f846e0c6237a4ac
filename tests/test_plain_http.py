"""Acceptance: outside the API (``/api/``, ``/admin/``) answers are plain HTTP (the probes
``/healthz``, ``/readyz`` and ``/metrics`` included, and the web page's assets): an unknown
path is a real 404, a wrong method a real 405, a fault a real 500, each with a short
text/plain body; inside it they stay envelopes sent with HTTP 200. Real server, real HTTP."""

from __future__ import annotations

import httpx
import pytest

from conftest import Server
from test_files_api import auth, png, signer, stream_upload, uploaded
from test_jobs_api import envelope_of


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("GET", "/assets/nope.js"),
        ("POST", "/nope"),
        ("HEAD", "/index.html"),
        ("GET", "/apiary"),  # only /api itself and what lies under it is the API
        ("GET", "/files/"),
        ("GET", "/docs-static/nope.js"),
    ],
)
def test_unknown_paths_outside_the_api_are_a_plain_404(
    server: Server, method: str, path: str
) -> None:
    response = server.client.request(method, path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["x-request-id"]
    assert response.text == ("" if method == "HEAD" else "Not Found\n")


def test_a_wrong_method_outside_the_api_is_a_plain_405(server: Server) -> None:
    response = server.client.post("/files/1/2/x.png")
    assert response.status_code == 405
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}
    # The load balancers' probes are plain HTTP too.
    assert server.client.put("/healthz").status_code == 405
    # Inside the API, as before: a 404 envelope naming the method.
    answer = envelope_of(server.client.put("/api/v1/jobs/createTask"))
    assert answer["code"] == 404
    assert "PUT" in answer["msg"]


def test_a_fault_outside_the_api_is_a_plain_500_and_an_envelope_inside(server: Server) -> None:
    """A storage fault (the uploaded file turned into a symlink loop on the disk) while
    serving its link, and while the API looks at the same file."""
    key = server.key()
    url = uploaded(stream_upload(server, key, png()))["downloadUrl"]
    stored = signer(server).parse(url)
    assert stored is not None
    path = server.data_dir / "files" / stored
    path.unlink()
    path.symlink_to(path.name)

    response = httpx.get(url)
    assert response.status_code == 500
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    request_id = response.headers["x-request-id"]
    assert response.text == f"internal server error (request id {request_id})\n"

    answer = envelope_of(
        server.client.post("/api/v1/common/download-url", json={"url": url}, headers=auth(key))
    )
    assert answer["code"] == 500
    assert request_id not in answer["msg"]  # another request, its own id

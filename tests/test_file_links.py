"""Acceptance: file links answer real HTTP, not the API's envelope: a link we did not sign is 403
whether or not its file exists, then an authentic but expired link is 410, then an
authentic, live link to a file that is gone is 404; each with a short text/plain body.
Over real HTTP against a real server; the SDK's downloads raise a typed error for each."""

from __future__ import annotations

import time

import httpx
import pytest

from bananastand.client import Client, ForbiddenError, GoneError, NotFoundError, RetryPolicy
from bananastand.storage.links import LinkSigner
from conftest import Server
from test_files_api import png, signer, stream_upload, uploaded

METHODS = ["GET", "HEAD"]


def refused(method: str, url: str, status: int) -> str:
    """The text of a refusal, after checking it is plain HTTP (HEAD: headers alone)."""
    response = httpx.request(method, url, headers={"Authorization": "Bearer whatever"})
    assert response.status_code == status, (method, url, response.status_code, response.text)
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    if method == "HEAD":
        assert response.content == b""
        return ""
    assert response.headers["content-length"] == str(len(response.content))
    assert len(response.text) < 100
    return response.text


def links(server: Server) -> tuple[str, str]:
    """The storage key of a fresh upload and a key next to it holding no file."""
    url = uploaded(stream_upload(server, server.key(), png()))["downloadUrl"]
    key = signer(server).parse(url)
    assert key is not None
    assert httpx.get(url).status_code == 200
    return key, key.replace(".png", "-gone.png")


def not_ours(server: Server, key: str, expires_at: int) -> list[str]:
    """Links to ``key`` that this server did not sign, each spoilt in another way."""
    good = signer(server).url(key, expires_at)
    prefix, rest = good.split("/files/")
    expires, signature, path = rest.split("/", 2)
    other = "A" if signature[-1] != "A" else "B"
    return [
        f"{prefix}/files/{int(expires) + 3600}/{signature}/{path}",  # extended by hand
        f"{prefix}/files/{expires}/{signature[:-1]}{other}/{path}",  # signature altered
        f"{prefix}/files/{expires}/{signature}/{path.replace('.png', '.jpg')}",  # other file
        f"{prefix}/files/{expires}/{signature}/{path}x",
        f"{prefix}/files/{expires}/{signature}/../{path}",
        f"{prefix}/files/soon/{signature}/{path}",  # not even a number
        LinkSigner(b"another secret, another server", prefix).url(key, expires_at),
    ]


@pytest.mark.parametrize("method", METHODS)
def test_a_link_we_did_not_sign_is_403_whether_or_not_its_file_exists(
    server: Server, method: str
) -> None:
    present, missing = links(server)
    live, expired = int(time.time()) + 600, int(time.time()) - 600
    texts = set()
    for key in (present, missing):
        for expires_at in (live, expired):  # the signature is checked before the expiry
            for link in not_ours(server, key, expires_at):
                texts.add(refused(method, link, 403))
    # The same answer for every one: nothing tells a present file from a missing one.
    assert len(texts) == 1


@pytest.mark.parametrize("method", METHODS)
def test_an_authentic_expired_link_is_410_whether_or_not_its_file_exists(
    server: Server, method: str
) -> None:
    present, missing = links(server)
    for key in (present, missing):  # the expiry is checked before the file
        for ago in (1, 3600):
            text = refused(method, signer(server).url(key, int(time.time()) - ago), 410)
            assert method == "HEAD" or "expired" in text


@pytest.mark.parametrize("method", METHODS)
def test_an_authentic_live_link_to_a_missing_file_is_404(server: Server, method: str) -> None:
    present, missing = links(server)
    text = refused(method, signer(server).url(missing, int(time.time()) + 600), 404)
    assert method == "HEAD" or "no longer exists" in text
    live = signer(server).url(present, int(time.time()) + 600)
    (server.data_dir / "files" / present).unlink()  # as the retention sweep would
    refused(method, live, 404)


def test_the_sdk_raises_a_typed_error_for_each_refused_download_and_does_not_retry(
    server: Server,
) -> None:
    present, missing = links(server)
    soon = int(time.time()) + 600
    retried: list[str] = []
    cases = [
        (not_ours(server, present, soon)[1], ForbiddenError, 403),
        (signer(server).url(present, int(time.time()) - 1), GoneError, 410),
        (signer(server).url(missing, soon), NotFoundError, 404),
    ]
    with Client(
        server.base_url,
        server.key(),
        retry=RetryPolicy(base_s=0.01),
        on_retry=lambda _request, error, _delay: retried.append(str(error)),
    ) as client:
        for url, error, status in cases:
            with pytest.raises(error) as raised:
                client.download(url)
            assert raised.value.code == status
            # The server's reason comes along; the link (a credential) does not.
            assert raised.value.msg.startswith(f"HTTP {status}: "), raised.value.msg
            assert url.split("/files/")[1].split("/")[1] not in raised.value.msg
        assert client.download(signer(server).url(present, soon)).data == png()
    assert retried == []

"""Unit: the server's and the client's error trees take their codes from one table, and
each has one class for every refusal code of it; a refusal the server sends is read by the
client as that same refusal."""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import bananastand.client.errors as client
import bananastand.errors as server
from bananastand.api.envelope import install_error_handlers
from bananastand.client.answers import parse_envelope
from bananastand.codes import REFUSALS, Code

#: What file links answer without an envelope, which only the client reads as errors.
PLAIN_HTTP = (HTTPStatus.FORBIDDEN, HTTPStatus.GONE)


def below(root: type[Any]) -> list[type[Any]]:
    found: list[type[Any]] = []
    for sub in root.__subclasses__():
        found += [sub, *below(sub)]
    return found


#: The server raises ``ApiError`` itself for a 500; the client's is only their root.
SERVER_CLASSES = [server.ApiError, *below(server.ApiError)]
CLIENT_CLASSES = below(client.ApiError)


def server_class(code: Code) -> type[server.ApiError]:
    [cls] = [cls for cls in SERVER_CLASSES if cls.code == code]
    return cls


def test_every_class_takes_its_code_from_the_table() -> None:
    assert {cls.code for cls in SERVER_CLASSES} <= set(REFUSALS)
    assert {cls.code for cls in CLIENT_CLASSES} <= {*REFUSALS, *PLAIN_HTTP}


@pytest.mark.parametrize("code", REFUSALS)
def test_the_server_has_one_class_for_each_refusal(code: Code) -> None:
    assert server_class(code).code == code


@pytest.mark.parametrize("code", [*REFUSALS, *PLAIN_HTTP])
def test_the_client_reads_each_refusal_as_the_one_class_of_its_code(code: int) -> None:
    error = client.error_for_code(code, "refused")
    [cls] = [cls for cls in CLIENT_CLASSES if cls.code == code]
    assert type(error) is cls
    assert (error.code, error.msg) == (code, "refused")


def test_a_code_the_client_does_not_know_is_a_server_error_that_keeps_it() -> None:
    error = client.error_for_code(599, "new")
    assert type(error) is client.ServerError
    assert error.code == 599


@pytest.mark.parametrize("code", REFUSALS)
def test_what_the_server_answers_the_client_reads_as_the_same_refusal(code: Code) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/api/refuse")
    def refuse() -> None:
        raise server_class(code)("no, because", retry_after=3)

    async def ask() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as http:
            return await http.get("/api/refuse")

    response = asyncio.run(ask())
    assert response.status_code == 200
    with pytest.raises(client.ApiError) as raised:
        parse_envelope(response)
    assert (raised.value.code, raised.value.msg, raised.value.retry_after) == (
        code,
        "no, because",
        3.0,
    )
    assert type(raised.value).code == code  # its own class, not the fallback for unknowns

"""Acceptance: the admin API's bodies: authenticated before a byte is read, capped like
createTask's,
parsed by the same parser (no framework messages), and values the database cannot hold
refused with a 422 naming the field."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from accounts_helpers import ADMIN_TOKEN, admin, admin_ok
from conftest import Server, cli

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
#: Far more than any cap; only its first bytes are ever sent.
DECLARED = 128 * 1024 * 1024


@pytest.fixture
def operated(start_server: Callable[..., Server]) -> Server:
    return start_server(admin_token=ADMIN_TOKEN, run_worker=False)


def answer_before_the_body(
    server: Server, path: str, headers: dict[str, str], *, chunked: bool = False
) -> dict[str, Any]:
    """The answer to a POST whose body is never sent in full.

    The request declares ``DECLARED`` bytes (or, ``chunked``, sends chunks past any cap and
    never the last one), sends a part, then waits for the answer: a server that reads the
    whole body before answering never answers, and the read times out.
    """
    url = urlsplit(server.base_url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    try:
        connection.putrequest("POST", path)
        for name, value in headers.items():
            connection.putheader(name, value)
        if chunked:
            connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders()
            chunk = b'{"name":"' + b"x" * 65536
            for _ in range(server.settings.max_body_bytes // len(chunk) + 2):
                connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            connection.putheader("Content-Length", str(DECLARED))
            connection.endheaders(b'{"name":"' + b"x" * 4096)
        response = connection.getresponse()
        assert response.status == 200
        answer: dict[str, Any] = json.loads(response.read())
        return answer
    finally:
        connection.close()


def test_a_huge_body_without_the_admin_token_is_401_unread(operated: Server) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        answer = answer_before_the_body(operated, "/admin/accounts", headers)
        assert answer["code"] == 401, answer
        assert answer["data"] is None


def test_a_huge_body_to_a_disabled_admin_api_is_404_unread(server: Server) -> None:
    answer = answer_before_the_body(server, "/admin/accounts", {"Authorization": "Bearer x"})
    assert answer["code"] == 404, answer
    assert "BANANASTAND_ADMIN_TOKEN" in answer["msg"]


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_an_admin_body_over_the_cap_is_422_unread(operated: Server, chunked: bool) -> None:
    answer = answer_before_the_body(operated, "/admin/accounts", ADMIN, chunked=chunked)
    assert answer["code"] == 422, answer
    assert answer["msg"] == f"body: larger than {operated.settings.max_body_bytes} bytes"


def test_an_admin_body_within_the_cap_still_works(operated: Server) -> None:
    made = admin_ok(operated, "POST", "/admin/accounts", {"name": "team"})
    assert made["name"] == "team"
    account_id = made["id"]
    limits = admin_ok(operated, "POST", f"/admin/accounts/{account_id}/limits", {"maxWaiting": 3})
    assert limits["maxWaiting"] == 3
    refused = admin(operated, "POST", f"/admin/accounts/{account_id}/limits", {"max": 3})
    assert refused["code"] == 422
    assert refused["msg"].startswith("max:"), refused


@pytest.mark.parametrize("path", ["/admin/accounts", "/admin/maintenance"])
def test_deeply_nested_json_to_the_admin_api_is_our_422(operated: Server, path: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    response = operated.client.post(path, content=deep, headers=ADMIN)
    answer = response.json()
    assert answer["code"] == 422, answer
    assert answer["msg"].startswith("body: not valid JSON"), answer


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        pytest.param(b'{"name":"\\ud800"}', "", id="account-name"),
        pytest.param(b'{"name":"' + b"n" * 201 + b'"}', "name", id="account-name-long"),
    ],
)
def test_account_names_the_database_cannot_hold_are_422(
    operated: Server, raw: bytes, field: str
) -> None:
    answer = operated.client.post("/admin/accounts", content=raw, headers=ADMIN).json()
    assert answer["code"] == 422, answer
    assert answer["msg"].startswith(f"{field}:" if field else "body: not valid JSON"), answer


BIG = b"1" + b"0" * 30  # 10**30: beyond any 64-bit column


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        pytest.param("credits", b'{"amount":' + BIG + b"}", "amount", id="amount"),
        pytest.param("credits", b'{"amount":-' + BIG + b"}", "amount", id="amount-negative"),
        pytest.param("credits", b'{"amount":9223372036854775808}', "amount", id="amount-2**63"),
        pytest.param("credits", b'{"amount":1,"note":"\\ud800"}', "", id="note-surrogate"),
        pytest.param("limits", b'{"maxWaiting":' + BIG + b"}", "maxWaiting", id="max-waiting"),
        pytest.param("limits", b'{"maxWaiting":2147483648}', "maxWaiting", id="max-waiting-2**31"),
        pytest.param("limits", b'{"monthlyCap":' + BIG + b"}", "monthlyCap", id="monthly-cap"),
        pytest.param("keys", b'{"expiresAt":' + BIG + b"}", "expires", id="expires-at"),
        pytest.param("keys", b'{"expiresAt":9223372036854775807}', "expires", id="expires-max"),
        pytest.param("keys", b'{"name":"\\udc00x"}', "", id="key-name-surrogate"),
    ],
)
def test_values_the_database_cannot_hold_are_422_naming_the_field(
    operated: Server, path: str, raw: bytes, field: str
) -> None:
    account_id = admin_ok(operated, "POST", "/admin/accounts", {"name": "team"})["id"]
    before = admin_ok(operated, "GET", f"/admin/accounts/{account_id}")
    url = f"/admin/accounts/{account_id}/{path}"
    answer = operated.client.post(url, content=raw, headers=ADMIN).json()
    assert answer["code"] == 422, answer
    # "expiresAt: ..." from the body's model, "expires: ..." from the domain (as in the CLI).
    assert answer["msg"].startswith(field or "body: not valid JSON"), answer
    # Nothing was written.
    assert admin_ok(operated, "GET", f"/admin/accounts/{account_id}") == before


def test_a_grant_that_would_overflow_the_balance_is_422(operated: Server) -> None:
    account_id = admin_ok(operated, "POST", "/admin/accounts", {"name": "rich"})["id"]
    grant = f"/admin/accounts/{account_id}/credits"
    assert admin_ok(operated, "POST", grant, {"amount": 2**63 - 1})["credits"] == 2**63 - 1
    answer = admin(operated, "POST", grant, {"amount": 1})
    assert answer["code"] == 422, answer
    assert answer["msg"].startswith("amount:"), answer
    assert admin_ok(operated, "GET", f"/admin/accounts/{account_id}")["credits"] == 2**63 - 1


def test_the_cli_refuses_the_same_values_in_one_line(operated: Server) -> None:
    account_id = admin_ok(operated, "POST", "/admin/accounts", {"name": "team"})["id"]
    not_utf8 = os.fsdecode(b"\xff")  # how Python sees an argument that is not UTF-8
    for args, field in (
        (("credits", "add", str(10**30), "--account", account_id), "amount"),
        (("credits", "add", "1", "--account", account_id, "--note", not_utf8), "note"),
        (("accounts", "set-limits", account_id, "--max-waiting", str(10**30)), "max_waiting"),
        (("accounts", "set-limits", account_id, "--monthly-cap", str(2**63)), "monthly_cap"),
        (("accounts", "create", "--name", not_utf8), "name"),
        (("keys", "create", "--account", account_id, "--name", not_utf8), "name"),
        (("maintenance", "on", "--message", not_utf8), "message"),
    ):
        done = cli(operated.data_dir, *args)
        assert done.returncode == 2, (args, done.stderr)  # a refused value: usage
        # One message (the console may wrap it), no traceback.
        assert done.stderr.startswith(f"error: {field}:"), (args, done.stderr)
        assert "Traceback" not in done.stderr, (args, done.stderr)
    shown = admin_ok(operated, "GET", f"/admin/accounts/{account_id}")
    assert (shown["credits"], shown["maxWaiting"], shown["keys"]) == (0, None, [])
    assert admin_ok(operated, "GET", "/admin/switches")["maintenance"] is False

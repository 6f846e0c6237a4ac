"""Acceptance: the jobs API over real HTTP, as the hosted API's clients see it (design.md,
"Contract").

Every test talks to a real in-process server (uvicorn on loopback, real SQLite file, the
real worker and sandbox provider where a task must run); nothing of ours is mocked.
Validation and auth cases share one module-wide server that runs no worker, since none of
them may create a task.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from bananastand.accounts import NewKey
from bananastand.contract import TaskRecord
from conftest import BIN, Server, database_env, prompt_body, with_accounts
from waiting import wait_for

JOBS = "/api/v1/jobs"
CREATE = f"{JOBS}/createTask"
RECORD = f"{JOBS}/recordInfo"
CANCEL = f"{JOBS}/cancel"
LIST = f"{JOBS}/list"
MODELS = "/api/v1/models"

ENVELOPE_KEYS = {"code", "msg", "message", "data"}
RECORD_KEYS = {
    "taskId",
    "model",
    "state",
    "param",
    "resultJson",
    "failCode",
    "failMsg",
    "costTime",
    "createTime",
    "updateTime",
    "completeTime",
    "creditsConsumed",
}
STATES = {"waiting", "queuing", "generating", "success", "fail"}
URL_SAFE = re.compile(r"[A-Za-z0-9_-]+")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


# -- helpers ------------------------------------------------------------------------------


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def find_keys(value: Any, name: str) -> list[Any]:
    """Every value stored under key ``name`` anywhere in a decoded JSON document."""
    found: list[Any] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == name:
                found.append(item)
            found.extend(find_keys(item, name))
    elif isinstance(value, list):
        for item in value:
            found.extend(find_keys(item, name))
    return found


def envelope_of(response: httpx.Response) -> dict[str, Any]:
    """The envelope of an answer, after checking everything every JSON answer must keep."""
    assert response.status_code == 200, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
    answer = response.json()
    assert isinstance(answer, dict), answer
    assert set(answer) == ENVELOPE_KEYS, answer
    assert type(answer["code"]) is int, answer
    assert isinstance(answer["msg"], str), answer
    assert answer["msg"] == answer["message"], answer
    assert find_keys(answer, "status") == [], answer
    return answer


def create(
    server: Server,
    key: str | None,
    body: Any = None,
    *,
    content: bytes | str | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    sent = {**(auth(key) if key else {}), **(headers or {})}
    if content is None:
        response = server.client.post(CREATE, json=body, headers=sent)
    else:
        response = server.client.post(CREATE, content=content, headers=sent)
    return envelope_of(response)


def create_id(server: Server, key: str, body: Any = None, **headers: str) -> str:
    answer = create(server, key, prompt_body() if body is None else body, headers=headers)
    assert answer["code"] == 200, answer
    assert answer["msg"] == "success"
    assert set(answer["data"]) == {"taskId"}
    task_id: str = answer["data"]["taskId"]
    return task_id


def record(server: Server, key: str | None, task_id: str | None = None) -> dict[str, Any]:
    params = {} if task_id is None else {"taskId": task_id}
    headers = auth(key) if key else {}
    return envelope_of(server.client.get(RECORD, params=params, headers=headers))


def cancel(server: Server, key: str | None, body: Any) -> dict[str, Any]:
    headers = auth(key) if key else {}
    return envelope_of(server.client.post(CANCEL, json=body, headers=headers))


def list_page(server: Server, key: str | None, **params: Any) -> dict[str, Any]:
    headers = auth(key) if key else {}
    return envelope_of(server.client.get(LIST, params=params, headers=headers))


def list_all(server: Server, key: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": 100, **({"cursor": cursor} if cursor else {})}
        answer = list_page(server, key, **query)
        assert answer["code"] == 200, answer
        items.extend(answer["data"]["items"])
        cursor = answer["data"]["nextCursor"]
        if cursor is None:
            return items


def wait_state(server: Server, key: str, task_id: str, states: set[str]) -> dict[str, Any]:
    """The task's record once it is in one of ``states``; one that ended otherwise fails."""

    def reached(data: dict[str, Any]) -> bool:
        assert data["state"] not in {"success", "fail"} - states, data
        return data["state"] in states

    found: dict[str, Any] = wait_for(
        lambda: record(server, key, task_id)["data"],
        reached,
        what=f"task {task_id} in {sorted(states)}",
        interval=0.02,
    )
    return found


def check_record(record_data: dict[str, Any], *, body: Any = None) -> None:
    """What every recordInfo ``data`` must be, field for field (design.md), and what the
    API's model of it (the OpenAPI schema, the client's ``Task``) reads without loss."""
    assert set(record_data) == RECORD_KEYS == set(TaskRecord.model_fields), record_data
    assert TaskRecord.model_validate(record_data).model_dump() == record_data
    assert URL_SAFE.fullmatch(record_data["taskId"])
    assert record_data["model"] == "nano-banana-pro"
    state = record_data["state"]
    assert state in STATES
    assert isinstance(record_data["param"], str)
    if body is not None:
        assert json.loads(record_data["param"]) == body
    for name in ("resultJson", "failCode", "failMsg"):
        assert isinstance(record_data[name], str), (name, record_data)
    credits = record_data["creditsConsumed"]
    assert isinstance(credits, int | float)
    assert not isinstance(credits, bool)

    now = time.time() * 1000
    created, updated = record_data["createTime"], record_data["updateTime"]
    assert type(created) is int
    assert type(updated) is int
    assert now - 120_000 < created <= updated <= now + 5_000
    completed = record_data["completeTime"]
    if state in ("success", "fail"):
        assert type(completed) is int, record_data
        assert updated <= completed <= now + 5_000
        assert type(record_data["costTime"]) is int
        assert 0 <= record_data["costTime"] <= completed - created
    else:
        assert completed is None, record_data
        assert record_data["resultJson"] == ""

    if state == "success":
        result = json.loads(record_data["resultJson"])
        assert set(result) == {"resultUrls"}
        assert isinstance(result["resultUrls"], list)
        assert len(result["resultUrls"]) == 1
        assert result["resultUrls"][0].startswith(("http://", "https://"))
    if state != "fail":
        assert record_data["failCode"] == ""
        assert record_data["failMsg"] == ""
    else:
        assert record_data["failCode"] in {"400", "403", "500", "504"}
        assert record_data["failMsg"]


def result_url(record_data: dict[str, Any]) -> str:
    url: str = json.loads(record_data["resultJson"])["resultUrls"][0]
    return url


def new_key(server: Server, *, test: bool = True, account_id: str | None = None) -> NewKey:
    made: NewKey = with_accounts(
        server, lambda accounts: accounts.create_key(account_id=account_id, is_test=test)
    )
    return made


@pytest.fixture(scope="module")
def shared_key(shared: Server) -> str:
    return shared.key()


@pytest.fixture
def idle(start_server: Callable[..., Server]) -> Server:
    """A server without a worker: its tasks stay ``waiting``."""
    return start_server(run_worker=False)


# -- the envelope -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/jobs/nope"),
        ("POST", "/api/v1/jobs/createTasks"),
        ("GET", "/api/v2/jobs/recordInfo"),
        ("GET", "/api/nope"),
        ("POST", "/api"),
        ("GET", "/admin/nope"),
    ],
)
def test_unknown_api_paths_answer_a_404_envelope(shared: Server, method: str, path: str) -> None:
    answer = envelope_of(shared.client.request(method, path))
    assert answer["code"] == 404
    assert answer["data"] is None
    assert answer["msg"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", CREATE),
        ("PUT", CREATE),
        ("DELETE", CREATE),
        ("POST", RECORD),
        ("PATCH", RECORD),
        ("GET", CANCEL),
        ("POST", LIST),
    ],
)
def test_wrong_methods_answer_a_404_envelope_naming_the_method(
    shared: Server, shared_key: str, method: str, path: str
) -> None:
    response = shared.client.request(method, path, headers=auth(shared_key))
    answer = envelope_of(response)
    assert answer["code"] == 404
    assert method in answer["msg"]


def test_healthz_answers_a_plain_200(shared: Server) -> None:
    response = shared.client.get("/healthz")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "ok\n"


def test_docs_and_openapi_describe_the_jobs_api(shared: Server) -> None:
    docs = shared.client.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "<html" in docs.text.lower()

    spec_response = shared.client.get("/openapi.json")
    assert spec_response.status_code == 200
    spec = spec_response.json()
    assert "/api/v1/jobs/recordInfo" in spec["paths"]
    assert "get" in spec["paths"]["/api/v1/jobs/recordInfo"]
    create_op = spec["paths"]["/api/v1/jobs/createTask"]["post"]
    schema = create_op["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "callBackUrl", "input"} <= set(schema["properties"])
    assert "model" in schema.get("required", [])


def test_every_response_carries_a_request_id(shared: Server, shared_key: str) -> None:
    responses = [
        shared.client.get("/healthz"),
        shared.client.get("/nope"),
        shared.client.get(CREATE),
        shared.client.get("/docs"),
        shared.client.get("/openapi.json"),
        shared.client.get(RECORD, params={"taskId": "task_x"}, headers=auth(shared_key)),
        shared.client.post(CREATE, content=b"{", headers=auth(shared_key)),
        shared.client.get(LIST),
    ]
    seen = set()
    for response in responses:
        request_id = response.headers.get("x-request-id")
        assert request_id, response.url
        seen.add(request_id)
    assert len(seen) == len(responses)  # a fresh id each time


@pytest.mark.parametrize("given", ["abc-123", "req.7:b_c", "0123456789abcdef0123456789abcdef"])
def test_a_sane_incoming_request_id_is_echoed(shared: Server, given: str) -> None:
    for response in (
        shared.client.get("/healthz", headers={"X-Request-ID": given}),
        shared.client.get("/nope", headers={"X-Request-ID": given}),
        shared.client.post(CREATE, headers={"X-Request-ID": given}),
    ):
        assert response.headers["x-request-id"] == given


@pytest.mark.parametrize("given", ["has space", "x" * 65, "<script>", "a;b"])
def test_an_insane_incoming_request_id_is_replaced(shared: Server, given: str) -> None:
    response = shared.client.get("/healthz", headers={"X-Request-ID": given})
    assert response.headers["x-request-id"]
    assert response.headers["x-request-id"] != given


# -- createTask and recordInfo ------------------------------------------------------------


def test_create_answers_exactly_and_the_record_is_complete(server: Server) -> None:
    key = server.key()
    body = prompt_body("a banana on a skateboard", aspect_ratio="1:1", resolution="1K")
    answer = create(server, key, body)
    assert answer == {
        "code": 200,
        "msg": "success",
        "message": "success",
        "data": {"taskId": answer["data"]["taskId"]},
    }
    task_id = answer["data"]["taskId"]
    assert URL_SAFE.fullmatch(task_id)

    first = record(server, key, task_id)
    assert first["code"] == 200
    assert first["msg"] == "success"
    assert first["data"] is not None
    assert first["data"]["taskId"] == task_id
    assert first["data"]["state"] in {"waiting", "queuing", "generating", "success"}
    check_record(first["data"], body=body)

    final = wait_state(server, key, task_id, {"success", "fail"})
    assert final["state"] == "success"
    check_record(final, body=body)
    assert final["createTime"] == first["data"]["createTime"]
    assert final["param"] == first["data"]["param"]


def test_a_task_polled_at_once_is_always_found(server: Server) -> None:
    key = server.key()
    for i in range(20):
        task_id = create_id(server, key, prompt_body(f"poll {i}"))
        answer = record(server, key, task_id)
        assert answer["code"] == 200, answer
        assert answer["data"] is not None
        assert answer["data"]["state"] in {"waiting", "queuing", "generating", "success"}


def test_task_ids_are_url_safe_and_unique(idle: Server) -> None:
    key = idle.key()
    ids = [create_id(idle, key) for _ in range(100)]
    assert len(set(ids)) == len(ids)
    for task_id in ids:
        assert URL_SAFE.fullmatch(task_id), task_id
        assert len(task_id) >= 20  # room for an unguessable random part
    # Put unencoded into a query string, they still work.
    response = idle.client.get(f"{RECORD}?taskId={ids[0]}", headers=auth(key))
    assert envelope_of(response)["data"]["taskId"] == ids[0]


def test_param_is_the_original_body_as_a_json_string(idle: Server) -> None:
    key = idle.key()
    body = {
        "model": "nano-banana-pro",
        "callBackUrl": "https://example.com/hook?x=1&y=é",
        "input": {
            "prompt": 'ünïcödé 🍌 "quotes" \\ back\nslash',
            "image_input": [],
            "aspect_ratio": "16:9",
            "resolution": "2K",
            "output_format": "jpeg",
            "seed": 42,
            "weights": [0.5, 1e-3, -7],
            "nested": {"a": [None, True, False]},
        },
        "clientRef": {"id": 7},
    }
    task_id = create_id(idle, key, body)
    data = record(idle, key, task_id)["data"]
    assert isinstance(data["param"], str)
    assert json.loads(data["param"]) == body
    check_record(data, body=body)


def test_param_keeps_big_numbers_of_the_body_exactly(idle: Server) -> None:
    """``param`` is the JSON of the original request: numbers must come back unchanged."""
    key = idle.key()
    body = prompt_body(seed=123456789012345678901234567890, negative=-(2**70))
    task_id = create_id(idle, key, body)
    data = record(idle, key, task_id)["data"]
    assert json.loads(data["param"]) == body


@pytest.mark.parametrize("task_id", [None, ""])
def test_record_info_without_task_id_is_422_naming_it(
    shared: Server, shared_key: str, task_id: str | None
) -> None:
    answer = record(shared, shared_key, task_id)
    assert answer["code"] == 422
    assert "taskId" in answer["msg"]
    assert answer["data"] is None


def test_record_info_of_an_unknown_task_is_404(shared: Server, shared_key: str) -> None:
    unknown = "task_" + "A" * 26
    answer = record(shared, shared_key, unknown)
    assert answer["code"] == 404
    assert answer["data"] is None


# -- lenient inputs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output_format", "pil_format", "mime", "magic"),
    [
        ("png", "PNG", "image/png", PNG_MAGIC),
        ("PNG", "PNG", "image/png", PNG_MAGIC),
        (None, "PNG", "image/png", PNG_MAGIC),
        ("jpg", "JPEG", "image/jpeg", JPEG_MAGIC),
        ("jpeg", "JPEG", "image/jpeg", JPEG_MAGIC),
        ("JPEG", "JPEG", "image/jpeg", JPEG_MAGIC),
        ("webp", "WEBP", "image/webp", None),
    ],
)
def test_output_format_gives_a_real_image_of_that_format(
    server: Server, output_format: str | None, pil_format: str, mime: str, magic: bytes | None
) -> None:
    key = server.key()
    body = prompt_body(output_format=output_format)
    task_id = create_id(server, key, body)
    data = wait_state(server, key, task_id, {"success", "fail"})
    assert data["state"] == "success", data
    check_record(data, body=body)
    url = result_url(data)
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == mime
    content = response.content
    if magic is not None:
        assert content.startswith(magic)
    else:
        assert content[:4] == b"RIFF"
        assert content[8:12] == b"WEBP"
    with Image.open(io.BytesIO(content)) as image:
        assert image.format == pil_format
        assert image.size == (1024, 1024)
        image.load()


def test_aspect_ratio_and_resolution_are_case_and_space_lenient(server: Server) -> None:
    key = server.key()
    body = prompt_body(aspect_ratio=" 16:9 ", resolution="2k", output_format="Jpg")
    task_id = create_id(server, key, body)
    data = wait_state(server, key, task_id, {"success", "fail"})
    assert data["state"] == "success", data
    with Image.open(io.BytesIO(httpx.get(result_url(data), timeout=30).content)) as image:
        assert image.format == "JPEG"
        assert image.size == (2752, 1536)


def test_null_optional_fields_mean_the_defaults(server: Server) -> None:
    key = server.key()
    body = {
        "model": "nano-banana-pro",
        "callBackUrl": None,
        "input": {
            "prompt": "defaults please",
            "image_input": None,
            "aspect_ratio": None,
            "resolution": None,
            "output_format": None,
        },
    }
    task_id = create_id(server, key, body)
    data = wait_state(server, key, task_id, {"success", "fail"})
    assert data["state"] == "success", data
    check_record(data, body=body)
    content = httpx.get(result_url(data), timeout=30).content
    assert content.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(content)) as image:
        assert image.size == (1024, 1024)  # 1:1 at 1K


def test_unknown_extra_fields_are_ignored(server: Server) -> None:
    key = server.key()
    body = {
        "model": "nano-banana-pro",
        "webhook": "https://example.com/x",
        "metadata": {"user": 1, "tags": ["a", "b"]},
        "status": "ignored",
        "input": {
            "prompt": "extras",
            "seed": 42,
            "n": 2,
            "negative_prompt": "no apples",
            "image_input": [],
            "mystery": {"deep": [1, {"x": None}]},
        },
    }
    task_id = create_id(server, key, body)
    data = wait_state(server, key, task_id, {"success", "fail"})
    assert data["state"] == "success", data
    check_record(data, body=body)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        None,
        "application/x-www-form-urlencoded",
        "application/json; charset=UTF-8",
    ],
)
def test_a_json_body_works_whatever_the_content_type(
    idle: Server, content_type: str | None
) -> None:
    key = idle.key()
    body = prompt_body("typed loosely")
    raw = json.dumps(body).encode()
    headers = {**auth(key), **({"Content-Type": content_type} if content_type else {})}
    request = idle.client.build_request("POST", CREATE, content=raw, headers=headers)
    if content_type is None:
        assert "content-type" not in request.headers
    answer = envelope_of(idle.client.send(request))
    assert answer["code"] == 200, answer
    data = record(idle, key, answer["data"]["taskId"])["data"]
    assert json.loads(data["param"]) == body


def test_an_empty_callback_url_means_none(idle: Server) -> None:
    key = idle.key()
    body = {**prompt_body(), "callBackUrl": ""}
    task_id = create_id(idle, key, body)
    assert json.loads(record(idle, key, task_id)["data"]["param"]) == body


def test_a_valid_callback_url_and_image_inputs_are_accepted(idle: Server) -> None:
    key = idle.key()
    urls = [f"https://images.example.com/{i}.png?sig=a%20b" for i in range(8)]
    body = {**prompt_body(image_input=urls), "callBackUrl": "http://example.com:8080/cb"}
    assert create(idle, key, body)["code"] == 200


def test_a_prompt_of_10000_characters_is_accepted(idle: Server) -> None:
    key = idle.key()
    assert create(idle, key, prompt_body("b" * 10_000))["code"] == 200
    assert create(idle, key, prompt_body("🍌" * 10_000))["code"] == 200


# -- strict inputs ------------------------------------------------------------------------


def _with_input(**fields: Any) -> dict[str, Any]:
    body = prompt_body()
    body["input"].update(fields)
    return body


INVALID_BODIES: list[Any] = [
    # model
    pytest.param({"model": "gpt-4", "input": {"prompt": "x"}}, "model", id="model-gpt-4"),
    pytest.param({"model": "", "input": {"prompt": "x"}}, "model", id="model-empty"),
    pytest.param({"model": "Nano Banana", "input": {"prompt": "x"}}, "model", id="model-other"),
    pytest.param({"input": {"prompt": "x"}}, "model", id="model-missing"),
    pytest.param({"model": None, "input": {"prompt": "x"}}, "model", id="model-null"),
    pytest.param(
        {"model": ["nano-banana-pro"], "input": {"prompt": "x"}}, "model", id="model-list"
    ),
    pytest.param(
        {"model": {"id": "nano-banana-pro"}, "input": {"prompt": "x"}}, "model", id="model-obj"
    ),
    pytest.param({"model": 1, "input": {"prompt": "x"}}, "model", id="model-number"),
    pytest.param({"model": True, "input": {"prompt": "x"}}, "model", id="model-bool"),
    # input
    pytest.param({"model": "nano-banana-pro"}, "input", id="input-missing"),
    pytest.param({"model": "nano-banana-pro", "input": None}, "input", id="input-null"),
    pytest.param({"model": "nano-banana-pro", "input": []}, "input", id="input-list"),
    pytest.param({"model": "nano-banana-pro", "input": "a banana"}, "input", id="input-str"),
    pytest.param({"model": "nano-banana-pro", "input": 1}, "input", id="input-number"),
    pytest.param({"model": "nano-banana-pro", "input": True}, "input", id="input-bool"),
    # input.prompt
    pytest.param({"model": "nano-banana-pro", "input": {}}, "input.prompt", id="prompt-missing"),
    pytest.param(prompt_body(""), "input.prompt", id="prompt-empty"),
    pytest.param(prompt_body("   "), "input.prompt", id="prompt-spaces"),
    pytest.param(prompt_body(" \t\n\r "), "input.prompt", id="prompt-whitespace"),
    pytest.param(prompt_body("x" * 10_001), "input.prompt", id="prompt-10001"),
    pytest.param(_with_input(prompt=None), "input.prompt", id="prompt-null"),
    pytest.param(_with_input(prompt=["a banana"]), "input.prompt", id="prompt-list"),
    pytest.param(_with_input(prompt={"text": "a"}), "input.prompt", id="prompt-object"),
    pytest.param(_with_input(prompt=42), "input.prompt", id="prompt-number"),
    pytest.param(_with_input(prompt=False), "input.prompt", id="prompt-bool"),
    # input.image_input
    pytest.param(
        _with_input(image_input=[f"https://example.com/{i}.png" for i in range(9)]),
        "input.image_input",
        id="images-9",
    ),
    pytest.param(_with_input(image_input=["not a url"]), "input.image_input", id="image-not-url"),
    pytest.param(
        _with_input(image_input=["example.com/a.png"]), "input.image_input", id="image-relative"
    ),
    pytest.param(
        _with_input(image_input=["ftp://example.com/a.png"]), "input.image_input", id="image-ftp"
    ),
    pytest.param(
        _with_input(image_input=["file:///etc/passwd"]), "input.image_input", id="image-file"
    ),
    pytest.param(
        _with_input(image_input=["javascript:alert(1)"]), "input.image_input", id="image-js"
    ),
    pytest.param(
        _with_input(image_input=["data:image/png;base64,iVBORw0KGgo="]),
        "input.image_input",
        id="image-data-uri",
    ),
    pytest.param(_with_input(image_input=["http://"]), "input.image_input", id="image-no-host"),
    pytest.param(
        _with_input(image_input=["http://a:99999/x"]), "input.image_input", id="image-port"
    ),
    pytest.param(
        _with_input(image_input=["http://[::1/x"]), "input.image_input", id="image-bad-ipv6"
    ),
    pytest.param(
        _with_input(image_input=["https://example.com/" + "a" * 3000]),
        "input.image_input",
        id="image-url-too-long",
    ),
    pytest.param(
        _with_input(image_input="https://example.com/a.png"), "input.image_input", id="images-str"
    ),
    pytest.param(
        _with_input(image_input={"url": "https://e.com/a"}), "input.image_input", id="images-obj"
    ),
    pytest.param(_with_input(image_input=1), "input.image_input", id="images-number"),
    pytest.param(_with_input(image_input=[1]), "input.image_input", id="image-number"),
    pytest.param(_with_input(image_input=[None]), "input.image_input", id="image-null"),
    pytest.param(
        _with_input(image_input=[["https://e.com/a"]]), "input.image_input", id="image-list"
    ),
    # enums
    pytest.param(_with_input(aspect_ratio="7:3"), "input.aspect_ratio", id="ratio-unknown"),
    pytest.param(_with_input(aspect_ratio="16x9"), "input.aspect_ratio", id="ratio-16x9"),
    pytest.param(_with_input(aspect_ratio=1), "input.aspect_ratio", id="ratio-number"),
    pytest.param(_with_input(aspect_ratio=["1:1"]), "input.aspect_ratio", id="ratio-list"),
    pytest.param(_with_input(aspect_ratio=True), "input.aspect_ratio", id="ratio-bool"),
    pytest.param(_with_input(resolution="8K"), "input.resolution", id="resolution-8k"),
    pytest.param(_with_input(resolution="1080p"), "input.resolution", id="resolution-1080p"),
    pytest.param(_with_input(resolution=1), "input.resolution", id="resolution-number"),
    pytest.param(_with_input(resolution={"k": 1}), "input.resolution", id="resolution-obj"),
    pytest.param(_with_input(output_format="gif"), "input.output_format", id="format-gif"),
    pytest.param(_with_input(output_format="bmp"), "input.output_format", id="format-bmp"),
    pytest.param(_with_input(output_format="image/png"), "input.output_format", id="format-mime"),
    pytest.param(_with_input(output_format=["png"]), "input.output_format", id="format-list"),
    pytest.param(_with_input(output_format=0), "input.output_format", id="format-number"),
    # callBackUrl
    pytest.param({**prompt_body(), "callBackUrl": "not a url"}, "callBackUrl", id="cb-not-url"),
    pytest.param({**prompt_body(), "callBackUrl": "ftp://e.com/x"}, "callBackUrl", id="cb-ftp"),
    pytest.param(
        {**prompt_body(), "callBackUrl": "file:///etc/passwd"}, "callBackUrl", id="cb-file"
    ),
    pytest.param(
        {**prompt_body(), "callBackUrl": "javascript:alert(1)"}, "callBackUrl", id="cb-js"
    ),
    pytest.param(
        {**prompt_body(), "callBackUrl": "/relative/path"}, "callBackUrl", id="cb-relative"
    ),
    pytest.param({**prompt_body(), "callBackUrl": 1}, "callBackUrl", id="cb-number"),
    pytest.param({**prompt_body(), "callBackUrl": ["https://e.com"]}, "callBackUrl", id="cb-list"),
    pytest.param(
        {**prompt_body(), "callBackUrl": {"url": "https://e.com"}}, "callBackUrl", id="cb-obj"
    ),
    pytest.param({**prompt_body(), "callBackUrl": True}, "callBackUrl", id="cb-bool"),
]


@pytest.mark.parametrize(("body", "field"), INVALID_BODIES)
def test_invalid_bodies_are_422_naming_the_field(
    shared: Server, shared_key: str, body: Any, field: str
) -> None:
    answer = create(shared, shared_key, body)
    assert answer["code"] == 422, answer
    assert answer["data"] is None
    assert field in answer["msg"], answer["msg"]
    # The field path comes first, then the rule: "input.prompt: ...".
    assert answer["msg"].startswith(field), answer["msg"]


RAW_INVALID_BODIES: list[Any] = [
    pytest.param(b"[]", id="empty-array"),
    pytest.param(b'[{"model": "nano-banana-pro", "input": {"prompt": "x"}}]', id="array"),
    pytest.param(b'"a banana"', id="string"),
    pytest.param(b"42", id="number"),
    pytest.param(b"3.5", id="float"),
    pytest.param(b"true", id="bool"),
    pytest.param(b"null", id="null"),
    pytest.param(b"{", id="truncated"),
    pytest.param(b'{"model": "nano-banana-pro", "input": {"prompt": "x"}', id="unclosed"),
    pytest.param(b"{'model': 'nano-banana-pro'}", id="single-quotes"),
    pytest.param(b'{"model": NaN}', id="nan"),
    pytest.param(b"model=nano-banana-pro&prompt=x", id="form-encoded"),
    pytest.param(b"\xff\xfe\x00garbage", id="binary"),
    pytest.param(b"", id="empty"),
    pytest.param(b"   \n\t ", id="whitespace"),
]


@pytest.mark.parametrize("raw", RAW_INVALID_BODIES)
def test_a_body_that_is_not_a_json_object_is_422(
    shared: Server, shared_key: str, raw: bytes
) -> None:
    answer = create(shared, shared_key, content=raw, headers={"Content-Type": "application/json"})
    assert answer["code"] == 422, answer
    assert answer["msg"].startswith("body"), answer["msg"]


def _big_body(size: int) -> bytes:
    body = prompt_body("x", padding="p" * size)
    return json.dumps(body).encode()


def test_a_body_over_the_size_cap_is_422(shared: Server, shared_key: str) -> None:
    raw = _big_body(300 * 1024)
    assert len(raw) > shared.settings.max_body_bytes
    answer = create(shared, shared_key, content=raw, headers={"Content-Type": "application/json"})
    assert answer["code"] == 422, answer
    assert answer["msg"].startswith("body"), answer["msg"]


def test_a_chunked_body_over_the_size_cap_is_422(shared: Server, shared_key: str) -> None:
    raw = _big_body(300 * 1024)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 16 * 1024):
            yield raw[start : start + 16 * 1024]

    response = shared.client.post(CREATE, content=chunks(), headers=auth(shared_key))
    answer = envelope_of(response)
    assert answer["code"] == 422, answer
    assert answer["msg"].startswith("body"), answer["msg"]


def test_a_body_just_under_the_size_cap_is_accepted(idle: Server) -> None:
    key = idle.key()
    raw = _big_body(250 * 1024)
    assert len(raw) <= idle.settings.max_body_bytes
    answer = create(idle, key, content=raw, headers={"Content-Type": "application/json"})
    assert answer["code"] == 200, answer


def test_refused_bodies_create_no_task(idle: Server) -> None:
    key = idle.key()
    for param in INVALID_BODIES[:: max(1, len(INVALID_BODIES) // 12)]:
        assert create(idle, key, param.values[0])["code"] == 422
    assert list_all(idle, key) == []


def test_deeply_nested_extra_fields_do_not_crash_the_server(
    shared: Server, shared_key: str
) -> None:
    """Nesting the JSON parser accepts but the server cannot re-encode: never a 500."""
    for depth in (300, 600, 1000):
        raw = (
            '{"model":"nano-banana-pro","input":{"prompt":"x","extra":'
            + "[" * depth
            + "]" * depth
            + "}}"
        )
        answer = create(shared, shared_key, content=raw)
        assert answer["code"] in {200, 422}, (depth, answer)


def test_nesting_beyond_the_parser_limit_is_422(shared: Server, shared_key: str) -> None:
    for depth in (1025, 10_000):
        answer = create(shared, shared_key, content="[" * depth + "]" * depth)
        assert answer["code"] == 422, (depth, answer)
        answer = create(
            shared,
            shared_key,
            content='{"model":"nano-banana-pro","input":{"prompt":' + "[" * depth + "]" * depth,
        )
        assert answer["code"] == 422, (depth, answer)


# -- no input ever produces a 500 ---------------------------------------------------------

ODD_STRINGS = [
    "",
    " ",
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "null",
    "undefined",
    "0",
    "-0",
    "1e999",
    "nano-banana-pro",
    "NANO-BANANA-PRO",
    " nano-banana-pro ",
    "\u0000",
    "a\u0000b",
    "\ufeff",
    "\u202eevil",
    "🍌" * 50,
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "\U0010ffff",
    "中文提示词",
    "'; DROP TABLE tasks; --",
    "../../../../etc/passwd",
    "http://127.0.0.1/x.png",
    "https://",
    "http://[::1]:0/",
    "javascript:alert(1)",
    "%00%ff",
    "\\u0000",
    "1:1",
    "4K",
    "jpeg",
    "auto",
    "x" * 10_001,
]


def _odd_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 4 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1])
    if kind == 3:
        return rng.choice([10 ** rng.randrange(20, 400), -(10 ** rng.randrange(20, 400))])
    if kind == 4:
        return rng.choice([0.0, -0.0, 1e308, -1e-308, 5e-324, 3.14159, 1e300 * 10])
    if kind in (5, 6, 7):
        return rng.choice(ODD_STRINGS)
    if kind in (8, 9):
        return [_odd_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(["model", "input", "prompt", "x", "", "🍌", "callBackUrl"]): _odd_value(
            rng, depth + 1
        )
        for _ in range(rng.randrange(4))
    }


def _odd_body(rng: random.Random, index: int) -> bytes:
    """One deterministic odd request body: invalid structure, types, sizes or encodings."""
    kind = index % 6
    if kind == 0:  # anything at all, encoded as JSON (NaN/Infinity literals included)
        return json.dumps(_odd_value(rng)).encode()
    if kind in (1, 2):  # a valid body with one field replaced by something odd
        body: dict[str, Any] = prompt_body()
        place = rng.choice(
            [
                ("model",),
                ("callBackUrl",),
                ("input",),
                ("input", "prompt"),
                ("input", "image_input"),
                ("input", "aspect_ratio"),
                ("input", "resolution"),
                ("input", "output_format"),
                ("input", "extra"),
                ("extra",),
            ]
        )
        target = body
        for part in place[:-1]:
            target = target[part]
        target[place[-1]] = _odd_value(rng)
        return json.dumps(body, ensure_ascii=rng.random() < 0.5).encode()
    if kind == 3:  # deep nesting, at the top or inside an ignored field
        depth = rng.choice([100, 254, 256, 300, 1000, 1024, 1025, 5000, 10_000])
        opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
        nested = opener * depth + "1" + closer * depth
        if rng.random() < 0.5:
            return nested.encode()
        return ('{"model":"nano-banana-pro","input":{"prompt":"x","deep":' + nested + "}}").encode()
    if kind == 4:  # huge numbers written out directly
        number = rng.choice(["1e999", "-1e999", "1" + "0" * 400, "-0.0e-999", "123456789" * 40])
        return f'{{"model":"nano-banana-pro","input":{{"prompt":"x","seed":{number}}}}}'.encode()
    # broken bytes: truncated or mangled valid JSON, invalid UTF-8, lone surrogates
    raw = bytearray(json.dumps(prompt_body("🍌 odd")).encode())
    mangle = rng.randrange(4)
    if mangle == 0:
        return bytes(raw[: rng.randrange(len(raw))])
    if mangle == 1:
        raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    if mangle == 2:
        return b'{"model":"nano-banana-pro","input":{"prompt":"\\ud800"}}'
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))


def test_no_input_ever_produces_a_500(idle: Server) -> None:
    key = idle.key()
    rng = random.Random(20240607)
    failures: list[str] = []
    for index in range(200):
        raw = _odd_body(rng, index)
        headers = {**auth(key), "Content-Type": "application/json"}
        response = idle.client.post(CREATE, content=raw, headers=headers)
        answer = envelope_of(response)
        if answer["code"] not in {200, 422}:
            failures.append(f"#{index} {raw[:120]!r}... -> {answer['code']} {answer['msg']}")
    assert not failures, "\n".join(failures)


# -- auth -------------------------------------------------------------------------------


def _all_endpoints(server: Server, headers: dict[str, str]) -> list[dict[str, Any]]:
    client = server.client
    return [
        envelope_of(client.post(CREATE, json=prompt_body(), headers=headers)),
        envelope_of(client.get(RECORD, params={"taskId": "task_x"}, headers=headers)),
        envelope_of(client.post(CANCEL, json={"taskId": "task_x"}, headers=headers)),
        envelope_of(client.get(LIST, headers=headers)),
        envelope_of(client.get(MODELS, headers=headers)),
    ]


BAD_AUTHORIZATION: list[Any] = [
    pytest.param(None, id="missing"),
    pytest.param("", id="empty"),
    pytest.param("Bearer", id="bearer-alone"),
    pytest.param("Basic dXNlcjpwYXNz", id="basic"),
    pytest.param("Bearer not-a-key", id="malformed"),
    pytest.param("Bearer bs_test_short", id="short"),
    pytest.param("Bearer bs_prod_" + "a" * 32, id="bad-prefix"),
    pytest.param("Bearer bs_test_" + "a" * 31 + "!", id="bad-char"),
    pytest.param("Bearer bs_test_" + "a" * 33, id="too-long"),
    pytest.param("Bearer bs_test_" + "Ab3" * 10 + "xy", id="unknown-test"),
    pytest.param("Bearer bs_live_" + "Zq9" * 10 + "xy", id="unknown-live"),
]


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATION)
def test_bad_authorization_is_401_on_every_endpoint(
    shared: Server, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for answer in _all_endpoints(shared, headers):
        assert answer["code"] == 401, answer
        assert answer["data"] is None


def test_the_key_must_come_with_a_bearer_scheme(shared: Server, shared_key: str) -> None:
    for authorization in (shared_key, f"Basic {shared_key}", f"Token {shared_key}"):
        for answer in _all_endpoints(shared, {"Authorization": authorization}):
            assert answer["code"] == 401, (authorization, answer)


def test_auth_is_checked_before_the_body(shared: Server) -> None:
    response = shared.client.post(CREATE, content=b"{not json", headers={"Authorization": "x"})
    assert envelope_of(response)["code"] == 401


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(idle: Server, scheme: str) -> None:
    key = idle.key()
    headers = {"Authorization": f"{scheme} {key}"}
    created = envelope_of(idle.client.post(CREATE, json=prompt_body(), headers=headers))
    assert created["code"] == 200, created
    task_id = created["data"]["taskId"]
    found = envelope_of(idle.client.get(RECORD, params={"taskId": task_id}, headers=headers))
    assert found["code"] == 200
    listed = envelope_of(idle.client.get(LIST, headers=headers))
    assert [item["taskId"] for item in listed["data"]["items"]] == [task_id]
    canceled = envelope_of(idle.client.post(CANCEL, json={"taskId": task_id}, headers=headers))
    assert canceled["code"] == 200


def test_a_revoked_key_is_401_everywhere(start_server: Callable[..., Server]) -> None:
    server = start_server(run_worker=False, key_cache_seconds=0)
    made = new_key(server)
    other = new_key(server, account_id=made.key.account_id)
    task_id = create_id(server, made.secret)
    assert list_page(server, made.secret)["code"] == 200

    with_accounts(server, lambda accounts: accounts.revoke_key(made.key.id))

    for answer in _all_endpoints(server, auth(made.secret)):
        assert answer["code"] == 401, answer
    assert record(server, made.secret, task_id)["code"] == 401
    assert cancel(server, made.secret, {"taskId": task_id})["code"] == 401
    # The account's other key still works and still sees the task.
    assert record(server, other.secret, task_id)["data"]["state"] == "waiting"


def test_a_key_revoked_with_the_cli_is_401(start_server: Callable[..., Server]) -> None:
    server = start_server(run_worker=False, key_cache_seconds=0)
    secret = server.key()
    assert list_page(server, secret)["code"] == 200
    env = {
        **os.environ,
        "BANANASTAND_DATA_DIR": str(server.data_dir),
        **database_env(server.data_dir),
    }
    listing = subprocess.run(
        [str(BIN / "bananastand"), "keys", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = [line.split("\t") for line in listing.stdout.splitlines() if line.startswith("key_")]
    key_id = next(row[0] for row in rows if row[4].rstrip("…") == secret[:12])
    subprocess.run(
        [str(BIN / "bananastand"), "keys", "revoke", key_id],
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    )
    for answer in _all_endpoints(server, auth(secret)):
        assert answer["code"] == 401, answer


# -- accounts see only their own tasks ----------------------------------------------------


def test_another_accounts_task_is_as_unknown_as_a_missing_one(idle: Server) -> None:
    owner = new_key(idle)
    same_account = new_key(idle, account_id=owner.key.account_id)
    stranger = new_key(idle)
    task_id = create_id(idle, owner.secret)
    unknown_id = "task_" + "Q" * 26

    def shape(answer: dict[str, Any], task: str) -> str:
        msg: str = answer["msg"]
        return msg.replace(task, "<ID>")

    foreign = record(idle, stranger.secret, task_id)
    missing = record(idle, stranger.secret, unknown_id)
    assert foreign["code"] == missing["code"] == 404
    assert foreign["data"] is None
    assert shape(foreign, task_id) == shape(missing, unknown_id)

    foreign_cancel = cancel(idle, stranger.secret, {"taskId": task_id})
    missing_cancel = cancel(idle, stranger.secret, {"taskId": unknown_id})
    assert foreign_cancel["code"] == missing_cancel["code"] == 404
    assert shape(foreign_cancel, task_id) == shape(missing_cancel, unknown_id)

    assert list_all(idle, stranger.secret) == []
    # The stranger's cancel changed nothing.
    assert record(idle, owner.secret, task_id)["data"]["state"] == "waiting"

    # A second key of the same account sees it, lists it and may cancel it.
    seen = record(idle, same_account.secret, task_id)
    assert seen["code"] == 200
    assert seen["data"]["taskId"] == task_id
    assert [item["taskId"] for item in list_all(idle, same_account.secret)] == [task_id]
    assert cancel(idle, same_account.secret, {"taskId": task_id})["data"]["failMsg"] == "canceled"


# -- live keys ----------------------------------------------------------------------------


def test_a_live_key_without_a_provider_is_505_and_creates_nothing(server: Server) -> None:
    key = server.key(test=False)
    answer = create(server, key, prompt_body())
    assert answer["code"] == 505
    assert answer["msg"] == "no provider configured for nano-banana-pro"
    assert answer["data"] is None
    listed = list_page(server, key)
    assert listed["code"] == 200
    assert listed["data"] == {"items": [], "nextCursor": None}
    # Test keys of the same server still run, on the sandbox.
    test_key = server.key()
    task_id = create_id(server, test_key)
    assert wait_state(server, test_key, task_id, {"success", "fail"})["state"] == "success"


def test_a_live_key_runs_on_the_sandbox_when_configured(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(live_provider="sandbox", billing=False)
    key = server.key(test=False)
    body = prompt_body("live banana")
    task_id = create_id(server, key, body)
    data = wait_state(server, key, task_id, {"success", "fail"})
    assert data["state"] == "success", data
    check_record(data, body=body)
    assert httpx.get(result_url(data), timeout=30).content.startswith(PNG_MAGIC)


# -- sandbox failures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "fail_code"),
    [("safety", "403"), ("input", "400"), ("upstream", "500"), ("timeout", "504")],
)
def test_sandbox_failure_prompts_end_as_fail(server: Server, mode: str, fail_code: str) -> None:
    key = server.key()
    body = prompt_body(f"a banana [sandbox:fail={mode}] please")
    task_id = create_id(server, key, body)
    data = wait_state(server, key, task_id, {"success", "fail"})
    assert data["state"] == "fail", data
    assert data["failCode"] == fail_code
    assert data["failMsg"]
    assert data["resultJson"] == ""
    assert isinstance(data["completeTime"], int)
    check_record(data, body=body)
    # Final states never change.
    assert record(server, key, task_id)["data"] == data


# -- Idempotency-Key ----------------------------------------------------------------------


def test_the_same_idempotency_key_and_body_give_the_same_task(idle: Server) -> None:
    key = idle.key()
    body = prompt_body("once only")
    first = create_id(idle, key, body, **{"Idempotency-Key": "order-17"})
    again = create_id(idle, key, body, **{"Idempotency-Key": "order-17"})
    assert again == first
    # Same JSON with its keys in another order is the same request.
    reordered = {"input": {"prompt": "once only"}, "model": "nano-banana-pro"}
    assert create_id(idle, key, reordered, **{"Idempotency-Key": "order-17"}) == first
    assert [item["taskId"] for item in list_all(idle, key)] == [first]

    # Without the header, the same body is a new task each time.
    other = create_id(idle, key, body)
    assert other != first
    assert len(list_all(idle, key)) == 2


def test_the_same_idempotency_key_with_another_body_is_422(idle: Server) -> None:
    key = idle.key()
    first = create_id(idle, key, prompt_body("one"), **{"Idempotency-Key": "k-1"})
    answer = create(idle, key, prompt_body("two"), headers={"Idempotency-Key": "k-1"})
    assert answer["code"] == 422, answer
    assert "Idempotency-Key" in answer["msg"]
    assert [item["taskId"] for item in list_all(idle, key)] == [first]


def test_idempotency_keys_are_per_account(idle: Server) -> None:
    alice_key = new_key(idle)
    alice, bob = alice_key.secret, idle.key()
    body = prompt_body("shared key")
    a = create_id(idle, alice, body, **{"Idempotency-Key": "same"})
    b = create_id(idle, bob, body, **{"Idempotency-Key": "same"})
    assert a != b
    assert [item["taskId"] for item in list_all(idle, alice)] == [a]
    assert [item["taskId"] for item in list_all(idle, bob)] == [b]
    # Another key of the same account shares the idempotency space.
    alice_second = idle.key(account_id=alice_key.key.account_id)
    assert create_id(idle, alice_second, body, **{"Idempotency-Key": "same"}) == a


def test_idempotency_key_length_is_checked(idle: Server) -> None:
    key = idle.key()
    answer = create(idle, key, prompt_body(), headers={"Idempotency-Key": "k" * 256})
    assert answer["code"] == 422
    assert "Idempotency-Key" in answer["msg"]
    assert create(idle, key, prompt_body(), headers={"Idempotency-Key": "k" * 255})["code"] == 200


def test_an_expired_idempotency_key_makes_a_new_task(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(run_worker=False, idempotency_ttl_seconds=0)
    key = server.key()
    body = prompt_body()
    first = create_id(server, key, body, **{"Idempotency-Key": "old"})
    second = create_id(server, key, body, **{"Idempotency-Key": "old"})
    assert first != second


def test_concurrent_creates_with_one_idempotency_key_make_one_task(idle: Server) -> None:
    key = idle.key()
    body = prompt_body("raced")
    barrier = threading.Barrier(20)
    answers: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            with httpx.Client(base_url=idle.base_url, timeout=30) as client:
                barrier.wait()
                response = client.post(
                    CREATE, json=body, headers={**auth(key), "Idempotency-Key": "race-1"}
                )
            answer = envelope_of(response)
            with lock:
                answers.append(answer)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(answers) == 20
    assert all(answer["code"] == 200 for answer in answers), answers
    ids = {answer["data"]["taskId"] for answer in answers}
    assert len(ids) == 1
    assert [item["taskId"] for item in list_all(idle, key)] == list(ids)


# -- cancel -------------------------------------------------------------------------------


def test_cancel_a_waiting_task(idle: Server) -> None:
    key = idle.key()
    task_id = create_id(idle, key)
    assert record(idle, key, task_id)["data"]["state"] == "waiting"

    answer = cancel(idle, key, {"taskId": task_id})
    assert answer["code"] == 200, answer
    data = answer["data"]
    check_record(data)
    assert data["taskId"] == task_id
    assert data["state"] == "fail"
    assert data["failCode"] == "400"
    assert data["failMsg"] == "canceled"
    assert isinstance(data["completeTime"], int)
    assert record(idle, key, task_id)["data"] == data

    # Canceling again is fine: it stays canceled, unchanged.
    again = cancel(idle, key, {"taskId": task_id})
    assert again["code"] == 200, again
    assert again["data"] == data


def test_cancel_a_finished_task_is_422(server: Server) -> None:
    key = server.key()
    done = create_id(server, key)
    failed = create_id(server, key, prompt_body("[sandbox:fail=safety]"))
    for task_id, ended in ((done, "succeeded"), (failed, "failed")):
        before = wait_state(server, key, task_id, {"success", "fail"})
        answer = cancel(server, key, {"taskId": task_id})
        assert answer["code"] == 422, answer
        assert answer["msg"] == f"taskId: the task has already {ended}; it cannot be canceled"
        assert record(server, key, task_id)["data"] == before


def test_cancel_a_generating_task_is_422(server: Server) -> None:
    key = server.key()
    task_id = create_id(server, key, prompt_body("slow [sandbox:delay=1500]"))
    wait_state(server, key, task_id, {"generating"})
    answer = cancel(server, key, {"taskId": task_id})
    assert answer["code"] == 422, answer
    assert answer["msg"] == "taskId: the task is already generating; it cannot be canceled"
    # The cancel attempt did not disturb the task.
    assert wait_state(server, key, task_id, {"success", "fail"})["state"] == "success"


def test_cancel_an_unknown_task_is_404(shared: Server, shared_key: str) -> None:
    answer = cancel(shared, shared_key, {"taskId": "task_" + "Z" * 26})
    assert answer["code"] == 404, answer
    assert answer["data"] is None


@pytest.mark.parametrize(
    "body",
    [{}, {"taskId": ""}, {"taskId": None}, {"taskId": 12}, {"taskId": ["t"]}, {"id": "task_x"}],
)
def test_cancel_without_a_task_id_is_422(shared: Server, shared_key: str, body: Any) -> None:
    answer = cancel(shared, shared_key, body)
    assert answer["code"] == 422, answer
    assert "taskId" in answer["msg"]


@pytest.mark.parametrize("raw", [b"", b"[]", b"null", b"{", b'"task_x"'])
def test_cancel_with_a_body_that_is_not_an_object_is_422(
    shared: Server, shared_key: str, raw: bytes
) -> None:
    response = shared.client.post(CANCEL, content=raw, headers=auth(shared_key))
    assert envelope_of(response)["code"] == 422


# -- list ---------------------------------------------------------------------------------


def test_list_pages_newest_first_without_gaps_or_duplicates(idle: Server) -> None:
    key = idle.key()
    created = [create_id(idle, key, prompt_body(f"task {i}")) for i in range(25)]
    newest_first = list(reversed(created))

    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        answer = list_page(idle, key, **params)
        assert answer["code"] == 200, answer
        assert set(answer["data"]) == {"items", "nextCursor"}
        pages.append(answer["data"]["items"])
        cursor = answer["data"]["nextCursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
        assert cursor
        assert len(pages) < 10

    assert [len(page) for page in pages] == [10, 10, 5]
    seen = [item["taskId"] for page in pages for item in page]
    assert seen == newest_first
    for page in pages:
        for item in page:
            assert item.pop("thumbnailUrl") is None  # none until a task has succeeded
            assert item.pop("upstream") is None  # no worker here: no upstream took it
            check_record(item)
    times = [item["createTime"] for page in pages for item in page]
    assert times == sorted(times, reverse=True)

    # The default page holds 20.
    default = list_page(idle, key)["data"]
    assert len(default["items"]) == 20
    assert default["nextCursor"]


def test_list_is_empty_for_a_new_account(shared: Server) -> None:
    answer = list_page(shared, shared.key())
    assert answer == {
        "code": 200,
        "msg": "success",
        "message": "success",
        "data": {"items": [], "nextCursor": None},
    }


def test_list_filters_by_state(idle: Server) -> None:
    key = idle.key()
    ids = [create_id(idle, key, prompt_body(f"s{i}")) for i in range(4)]
    cancel(idle, key, {"taskId": ids[1]})
    waiting = list_page(idle, key, state="waiting")["data"]["items"]
    assert [item["taskId"] for item in waiting] == [ids[3], ids[2], ids[0]]
    assert all(item["state"] == "waiting" for item in waiting)
    failed = list_page(idle, key, state="fail")["data"]["items"]
    assert [item["taskId"] for item in failed] == [ids[1]]
    assert list_page(idle, key, state="success")["data"]["items"] == []
    # Filter and pagination together.
    first = list_page(idle, key, state="waiting", limit=2)["data"]
    assert [item["taskId"] for item in first["items"]] == [ids[3], ids[2]]
    rest = list_page(idle, key, state="waiting", limit=2, cursor=first["nextCursor"])["data"]
    assert [item["taskId"] for item in rest["items"]] == [ids[0]]
    assert rest["nextCursor"] is None


def test_list_filters_by_model_in_pages_past_the_other_models(idle: Server) -> None:
    key = idle.key()
    other_key = idle.key()
    banana_2: list[str] = []
    pro: list[str] = []
    for index in range(5):  # interleaved, so a page of one model skips the other's
        pro.append(create_id(idle, key, prompt_body(f"pro {index}")))
        banana_2.append(
            create_id(idle, key, {"model": "nano-banana-2", "input": {"prompt": f"2 {index}"}})
        )
    create_id(idle, other_key, {"model": "nano-banana-2", "input": {"prompt": "not yours"}})
    cancel(idle, key, {"taskId": banana_2[2]})

    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        params = {"model": "nano-banana-2", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = list_page(idle, key, **params)["data"]
        assert all(item["model"] == "nano-banana-2" for item in page["items"])
        seen += [item["taskId"] for item in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == banana_2[::-1]
    assert [item["taskId"] for item in list_all(idle, key, model="nano-banana-pro")] == pro[::-1]
    failed = list_all(idle, key, model="nano-banana-2", state="fail")
    assert [item["taskId"] for item in failed] == [banana_2[2]]
    assert list_all(idle, key, model="nano-banana-pro", state="fail") == []
    # A model the server does not serve is no error: there are no tasks of it.
    unknown = list_page(idle, key, model="no-such-model")
    assert (unknown["code"], unknown["data"]) == (200, {"items": [], "nextCursor": None})
    assert list_page(idle, key, model="Nano-Banana-2")["data"]["items"] == []  # exact names


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"model": ""}, "model"),
        ({"model": "m" * 65}, "model"),
        ({"state": "bogus"}, "state"),
        ({"state": "WAITING!"}, "state"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": "99999999999999999999999"}, "limit"),
    ],
)
def test_list_refuses_bad_parameters(
    shared: Server, shared_key: str, params: dict[str, Any], field: str
) -> None:
    answer = list_page(shared, shared_key, **params)
    assert answer["code"] == 422, answer
    assert field in answer["msg"]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("garbage!", id="punctuation"),
        pytest.param("%%%", id="percent"),
        pytest.param("AAAA", id="zero-bytes"),
        pytest.param("é", id="non-ascii"),
        pytest.param(_b64(b"x12"), id="wrong-prefix"),
        pytest.param(_b64(b"sabc"), id="not-a-number"),
        pytest.param(_b64(b"s"), id="empty-number"),
        pytest.param(_b64(b"\xff\xfe"), id="not-utf8"),
        pytest.param(_b64(b"s" + b"9" * 30), id="number-too-big"),
    ],
)
def test_list_refuses_a_garbage_cursor(shared: Server, shared_key: str, cursor: str) -> None:
    answer = list_page(shared, shared_key, cursor=cursor)
    assert answer["code"] == 422, answer
    assert "cursor" in answer["msg"]


# -- result URLs --------------------------------------------------------------------------


def test_result_urls_download_without_the_api_key(server: Server) -> None:
    key = server.key()
    body = prompt_body("download me")
    first = create_id(server, key, body)
    second = create_id(server, key, body)
    data = wait_state(server, key, first, {"success", "fail"})
    other = wait_state(server, key, second, {"success", "fail"})
    assert data["state"] == other["state"] == "success"
    url = result_url(data)

    # The URL carries the task's unguessable random part and one of its own.
    assert first in url
    assert first.removeprefix("task_") in url
    token = url.rsplit("/", 1)[1].split(".")[0]
    assert len(token) >= 16
    assert URL_SAFE.fullmatch(token)
    assert result_url(other) != url  # same request, same bytes, yet its own link

    expected: bytes | None = None
    for headers in (
        {},
        {"Authorization": "Bearer xyz"},
        {"Authorization": f"Bearer {key}"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "garbage"},
    ):
        response = httpx.get(url, headers=headers, timeout=30)
        assert response.status_code == 200, (headers, response.text[:200])
        assert response.headers["content-type"] == "image/png"
        assert response.content.startswith(PNG_MAGIC)
        expected = expected or response.content
        assert response.content == expected


def _tamper(text: str, index: int) -> str:
    char = text[index]
    replacement = "A" if char != "A" else "B"
    return text[:index] + replacement + text[index + 1 :]


def test_tampered_result_urls_are_403(server: Server) -> None:
    key = server.key()
    task_id = create_id(server, key)
    data = wait_state(server, key, task_id, {"success", "fail"})
    url = result_url(data)
    base, _, name = url.rpartition("/")
    tampered = [
        f"{base}/{_tamper(name, 0)}",  # the file's own random token
        f"{base}/{_tamper(name, 10)}",
        url.replace(task_id, _tamper(task_id, len(task_id) - 1)),  # the task id's random part
        url.rsplit(".", 1)[0] + ".jpg",
        url + "x",
    ]
    for link in tampered:
        assert link != url
        response = httpx.get(link, timeout=30)
        assert response.status_code == 403, (link, response.text)
        assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/files/..%2fbananastand.db", 404),  # no such route
        ("/files/%2e%2e/bananastand.db", 404),
        ("/files/results/..%2f..%2fbananastand.db", 403),  # a link we did not sign
        ("/files/%2fetc%2fpasswd", 404),
        ("/files//etc/passwd", 404),
        ("/files/", 404),
    ],
)
def test_file_paths_cannot_escape_the_storage(shared: Server, path: str, status: int) -> None:
    response = httpx.get(shared.base_url + path, timeout=30)
    assert response.status_code == status, (path, response.text)
    assert response.headers["content-type"].startswith("text/plain")
    assert len(response.content) < 100

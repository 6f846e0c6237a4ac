"""Acceptance: what refusals say, over real HTTP: control characters in URLs, the limits of the
model
the caller named, keys that are not (or no longer) valid, and JSON nested too deep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from bananastand.accounts import Accounts
from bananastand.ids import now_ms
from conftest import Server, with_accounts

CREATE = "/api/v1/jobs/createTask"
LIST = "/api/v1/jobs/list"


@pytest.fixture(scope="module")
def key(shared: Server) -> str:
    return shared.key()


def post(server: Server, path: str, key: str, raw: bytes | str) -> dict[str, Any]:
    response = server.client.post(path, content=raw, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def create(server: Server, key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = server.client.post(CREATE, json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def body(model: str = "nano-banana-pro", **fields: Any) -> dict[str, Any]:
    return {"model": model, "input": {"prompt": "a banana", **fields}}


# -- control characters in URLs ------------------------------------------------------------


@pytest.mark.parametrize("control", ["\u0000", "\u0001", "\u001b", "\u007f", "\u0085"])
def test_a_control_character_in_a_url_is_422_naming_the_field(
    shared: Server, key: str, control: str
) -> None:
    url = f"http://example.com/a{control}b"
    answer = create(shared, key, {**body(), "callBackUrl": url})
    assert answer["code"] == 422, answer
    assert answer["msg"].startswith("callBackUrl: "), answer
    answer = create(shared, key, body(image_input=["http://example.com/ok.png", url]))
    assert answer["code"] == 422, answer
    assert answer["msg"].startswith("input.image_input.1: "), answer


def test_a_nul_sent_as_a_json_escape_is_refused(shared: Server, key: str) -> None:
    raw = (
        '{"model":"nano-banana-pro","callBackUrl":"http://example.com/a\\u0000b",'
        '"input":{"prompt":"a banana"}}'
    )
    answer = post(shared, CREATE, key, raw)
    assert answer["code"] == 422, answer
    assert answer["msg"].startswith("callBackUrl: "), answer


def test_a_percent_encoded_nul_is_only_a_character_of_the_url(shared: Server, key: str) -> None:
    answer = create(shared, key, {**body(), "callBackUrl": "http://example.com/a%00b"})
    assert answer["code"] == 200, answer


# -- the named model's limits --------------------------------------------------------------

IMAGES = [f"https://example.com/{index}.png" for index in range(20)]


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        pytest.param(
            body(image_input=IMAGES),
            "input.image_input: nano-banana-pro takes at most 8 images",
            id="pro-images",
        ),
        pytest.param(
            body("nano-banana-2", image_input=IMAGES),
            "input.image_input: nano-banana-2 takes at most 14 images",
            id="nb2-images",
        ),
        pytest.param(
            body("google/nano-banana", image_input=IMAGES[:1]),
            "input.image_input: google/nano-banana takes no images",
            id="nano-banana-images",
        ),
        pytest.param(
            body(prompt="x" * 20_001),
            "input.prompt: nano-banana-pro takes at most 10000 characters",
            id="pro-prompt",
        ),
        pytest.param(
            body("nano-banana-2", output_format="gif"),
            "input.output_format: nano-banana-2 supports jpg, png",
            id="nb2-format",
        ),
        pytest.param(
            body("google/nano-banana", resolution="8K"),
            "input.resolution: google/nano-banana supports 1K",
            id="nano-banana-resolution",
        ),
    ],
)
def test_a_refusal_speaks_of_the_named_models_limits(
    shared: Server, key: str, sent: dict[str, Any], expected: str
) -> None:
    answer = create(shared, key, sent)
    assert (answer["code"], answer["msg"]) == (422, expected), answer


PRO_RATIOS = "1:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, 9:16, 16:9, 21:9, auto"
NB2_RATIOS = "1:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, 9:16, 16:9, 21:9, 1:4, 4:1, 1:8, 8:1, auto"


@pytest.mark.parametrize(
    ("model", "field", "ratios"),
    [
        ("nano-banana-pro", "aspect_ratio", PRO_RATIOS),
        ("nano-banana-2", "aspect_ratio", NB2_RATIOS),
        ("google/nano-banana", "image_size", PRO_RATIOS),
    ],
)
@pytest.mark.parametrize("ratio", ["7:7", "1:4"])
def test_the_aspect_ratios_listed_are_the_named_models(
    shared: Server, key: str, model: str, field: str, ratios: str, ratio: str
) -> None:
    answer = create(shared, key, body(model, **{field: ratio}))
    if ratio in ratios.split(", "):
        assert answer["code"] == 200, answer
        return
    assert (answer["code"], answer["msg"]) == (422, f"input.{field}: {model} supports {ratios}")


def test_a_value_of_the_wrong_type_still_gets_the_general_message(shared: Server, key: str) -> None:
    answer = create(shared, key, body("nano-banana-2", aspect_ratio=16, image_input="x"))
    assert answer["code"] == 422, answer
    assert answer["msg"].startswith("input.image_input: Input should be a valid list"), answer


# -- keys ----------------------------------------------------------------------------------

REFUSED = "unknown, revoked or expired API key"


def _key_answer(server: Server, secret: str) -> dict[str, Any]:
    response = server.client.get(LIST, headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def test_an_unknown_well_formed_key_is_not_called_malformed(shared: Server) -> None:
    for secret in ("bs_live_" + "Zq9" * 10 + "xy", "bs_test_" + "A" * 32):
        assert _key_answer(shared, secret) == {
            "code": 401,
            "msg": REFUSED,
            "message": REFUSED,
            "data": None,
        }


def test_a_malformed_key_is_called_malformed(shared: Server) -> None:
    for secret in ("not-a-key", "bs_live_short", "bs_live_" + "a" * 31 + "!"):
        answer = _key_answer(shared, secret)
        assert answer["code"] == 401, answer
        assert answer["msg"].startswith("malformed API key"), answer


def test_a_revoked_or_expired_key_is_refused_as_such(start_server: Callable[..., Server]) -> None:
    server = start_server(run_worker=False, key_cache_seconds=0)

    async def make(accounts: Accounts) -> tuple[str, str, int]:
        revoked = await accounts.create_key()
        await accounts.revoke_key(revoked.key.id)
        expires_at = now_ms() + 300
        expiring = await accounts.create_key(expires_at=expires_at)
        return revoked.secret, expiring.secret, expires_at

    revoked, expiring, expires_at = with_accounts(server, make)
    assert _key_answer(server, revoked)["msg"] == REFUSED
    while now_ms() <= expires_at:  # the clock, not the server: no guess how long anything takes
        time.sleep(0.05)
    answer = _key_answer(server, expiring)
    assert (answer["code"], answer["msg"]) == (401, REFUSED), answer


# -- JSON nested too deep ------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "path",
    [CREATE, "/api/v1/jobs/cancel", "/api/file-url-upload", "/api/file-base64-upload"],
)
def test_json_nested_too_deep_is_our_422_everywhere(shared: Server, key: str, path: str) -> None:
    answer = post(shared, path, key, DEEP)
    assert answer["code"] == 422, answer
    assert answer["msg"].startswith("body: not valid JSON: depth limit exceeded"), answer


def test_json_nested_too_deep_within_download_urls_cap_is_our_422(shared: Server, key: str) -> None:
    depth = 5_000  # 10 kB: under download-url's own, smaller cap
    answer = post(shared, "/api/v1/common/download-url", key, "[" * depth + "]" * depth)
    assert answer["code"] == 422, answer
    assert answer["msg"].startswith("body: not valid JSON: depth limit exceeded"), answer

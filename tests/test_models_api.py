"""Acceptance: ``GET /api/v1/models``, what a key may ask for: each model's limits, choices,
output sizes and this key's prices, without the models switched off, and the sandbox's
magic prompts for test keys. Real server over real HTTP, switches flipped by the admin
API, tasks run to prove that what it lists is what createTask does."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from accounts_helpers import ADMIN_TOKEN, new_account, switch_model
from conftest import Server, prompt_body

MODELS = "/api/v1/models"
README = Path(__file__).resolve().parents[1] / "README.md"
README_TABLE_TAG = re.compile(r"^\| `(\[sandbox:[a-z]+=[A-Za-z]+\])` \|", re.MULTILINE)
STANDARD_RATIOS = ["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"]


def models_of(server: Server, key: str) -> dict[str, Any]:
    response = server.client.get(MODELS, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    assert (answer["code"], answer["msg"]) == (200, "success"), answer
    assert set(answer["data"]) == {"models", "sandbox"}
    return answer["data"]


def by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {model["model"]: model for model in data["models"]}


@pytest.fixture
def operated(start_server: Callable[..., Server]) -> Server:
    """Live keys run on the sandbox; the admin API is on; no worker (nothing runs)."""
    return start_server(admin_token=ADMIN_TOKEN, live_provider="sandbox", run_worker=False)


def test_a_test_key_sees_every_model_with_its_rules_sizes_and_no_price(
    operated: Server,
) -> None:
    data = models_of(operated, operated.key())
    assert [model["model"] for model in data["models"]] == list(operated.settings.models)
    models = by_name(data)
    pro = models["nano-banana-pro"]
    assert pro["maxPromptLength"] == 10000
    assert pro["maxImages"] == 8
    assert pro["aspectRatios"] == [*STANDARD_RATIOS, "auto"]
    assert pro["resolutions"] == ["1K", "2K", "4K"]
    assert pro["outputFormats"] == ["png", "jpg", "webp"]
    assert pro["defaults"] == {"aspect_ratio": "1:1", "resolution": "1K", "output_format": "png"}
    assert set(pro["outputSizes"]) == {"1K", "2K", "4K"}
    for sizes in pro["outputSizes"].values():
        assert list(sizes) == STANDARD_RATIOS  # every ratio but auto, whose size varies
    assert pro["outputSizes"]["1K"]["16:9"] == {"width": 1376, "height": 768}
    assert pro["outputSizes"]["2K"]["16:9"] == {"width": 2752, "height": 1536}
    assert pro["outputSizes"]["4K"]["1:1"] == {"width": 4096, "height": 4096}
    assert pro["outputSizes"]["1K"]["21:9"] == {"width": 1584, "height": 672}
    # Test keys are never charged.
    assert pro["prices"] == {"1K": 0, "2K": 0, "4K": 0}

    banana_2 = models["nano-banana-2"]
    assert banana_2["maxPromptLength"] == 20000
    assert banana_2["maxImages"] == 14
    assert banana_2["defaults"] == {
        "aspect_ratio": "auto",
        "resolution": "1K",
        "output_format": "jpg",
    }
    assert banana_2["outputFormats"] == ["jpg", "png"]
    assert {"1:4", "8:1", "auto"} <= set(banana_2["aspectRatios"])
    assert banana_2["outputSizes"]["2K"]["8:1"] == {"width": 5632, "height": 704}

    flash = models["google/nano-banana"]
    assert (flash["maxImages"], flash["maxPromptLength"]) == (0, 5000)
    assert flash["resolutions"] == ["1K"]
    assert list(flash["outputSizes"]) == ["1K"]
    assert flash["prices"] == {"1K": 0}


def test_a_live_key_sees_its_prices_and_no_sandbox(operated: Server) -> None:
    data = models_of(operated, operated.key(test=False))
    assert data["sandbox"] is None
    prices = {name: model["prices"] for name, model in by_name(data).items()}
    assert prices == {
        "nano-banana-pro": {"1K": 18, "2K": 18, "4K": 24},
        "nano-banana-2": {"1K": 8, "2K": 12, "4K": 18},
        "google/nano-banana": {"1K": 4},
    }
    batch = {name: model["batchPrices"] for name, model in by_name(data).items()}
    assert batch == {
        "nano-banana-pro": {"1K": 9, "2K": 9, "4K": 12},
        "nano-banana-2": {"1K": 4, "2K": 6, "4K": 9},
        "google/nano-banana": {"1K": 2},
    }


def test_prices_are_the_configured_ones_and_nothing_with_billing_off(
    start_server: Callable[..., Server],
) -> None:
    priced = start_server(live_provider="sandbox", run_worker=False, prices={
        "nano-banana-pro": {"1K": 30, "2K": 40, "4K": 50},
        "nano-banana-2": {"1K": 1, "2K": 2, "4K": 3},
        "google/nano-banana": {"1K": 5},
    })  # fmt: skip
    pro = by_name(models_of(priced, priced.key(test=False)))["nano-banana-pro"]
    assert pro["prices"] == {"1K": 30, "2K": 40, "4K": 50}
    free = start_server(live_provider="sandbox", run_worker=False, billing=False)
    for model in models_of(free, free.key(test=False))["models"]:
        assert set(model["prices"].values()) == {0}, model


def test_a_live_key_without_a_provider_may_use_no_model(server: Server) -> None:
    assert models_of(server, server.key(test=False)) == {"models": [], "sandbox": None}
    assert by_name(models_of(server, server.key()))  # test keys run on the sandbox


def test_switched_off_models_are_left_out_for_everyone_or_one_account(
    operated: Server,
) -> None:
    account_a, key_a = new_account(operated, test=True)
    _, key_b = new_account(operated, test=False)
    everything = list(operated.settings.models)

    switch_model(operated, "nano-banana-2", enabled=False)
    for key in (key_a, key_b):
        names = [model["model"] for model in models_of(operated, key)["models"]]
        assert names == [name for name in everything if name != "nano-banana-2"]
    switch_model(operated, "nano-banana-2", enabled=True)
    switch_model(operated, "nano-banana-pro", enabled=False, account_id=account_a)
    names_a = [model["model"] for model in models_of(operated, key_a)["models"]]
    assert names_a == [name for name in everything if name != "nano-banana-pro"]
    assert [model["model"] for model in models_of(operated, key_b)["models"]] == everything
    # What it leaves out, createTask refuses.
    assert operated.create(key_a, prompt_body())["code"] == 505


def test_the_sandbox_block_lists_the_magic_prompts_of_the_readme(operated: Server) -> None:
    sandbox = models_of(operated, operated.key())["sandbox"]
    assert sandbox is not None
    prompts = sandbox["magicPrompts"]
    assert all(set(prompt) == {"tag", "effect"} and prompt["effect"] for prompt in prompts)
    assert [prompt["tag"] for prompt in prompts] == README_TABLE_TAG.findall(README.read_text())


def test_each_magic_fail_prompt_ends_with_the_fail_code_it_names(server: Server) -> None:
    key = server.key()
    prompts = models_of(server, key)["sandbox"]["magicPrompts"]
    failing = [p for p in prompts if p["tag"].startswith("[sandbox:fail=")]
    assert len(failing) == 4
    for prompt in failing:
        [fail_code] = re.findall(r"failCode (\d{3})", prompt["effect"])
        task_id = server.create(key, prompt_body(f"a banana {prompt['tag']}"))["data"]["taskId"]
        record = server.wait(key, task_id)
        assert (record["state"], record["failCode"]) == ("fail", fail_code), prompt


@pytest.mark.parametrize(("resolution", "ratio"), [("2K", "16:9"), ("1K", "9:16")])
def test_a_listed_output_size_is_the_size_of_the_result(
    server: Server, resolution: str, ratio: str
) -> None:
    key = server.key()
    size = by_name(models_of(server, key))["nano-banana-pro"]["outputSizes"][resolution][ratio]
    body = prompt_body("sized", resolution=resolution, aspect_ratio=ratio)
    record = server.wait(key, server.create(key, body)["data"]["taskId"])
    url = json.loads(record["resultJson"])["resultUrls"][0]
    with Image.open(io.BytesIO(httpx.get(url, timeout=30).content)) as image:
        assert image.size == (size["width"], size["height"])


def test_the_openapi_document_describes_the_models_and_what_the_list_gained(
    operated: Server,
) -> None:
    spec = operated.client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    operation = spec["paths"][MODELS]["get"]
    assert operation["operationId"] == "listModels"
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ModelsAnswer"}
    offer = schemas["ModelOffer"]["properties"]
    assert {"maxPromptLength", "maxImages", "outputSizes", "prices", "defaults"} <= set(offer)
    listing = spec["paths"]["/api/v1/jobs/list"]["get"]
    assert "model" in {parameter["name"] for parameter in listing["parameters"]}
    assert "thumbnailUrl" in schemas["TaskListItem"]["properties"]
    assert schemas["TaskPage"]["properties"]["items"]["items"] == {
        "$ref": "#/components/schemas/TaskListItem"
    }

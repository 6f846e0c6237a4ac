"""Integration: the fake Gemini server's Batch API and Files API, driven by the real
google-genai SDK: what the batch lane relies on is the SDK's own reading of the fake's
answers."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable, Iterator

import pytest
from google import genai
from google.genai import errors, types

from bananastand.fake_gemini import FakeGemini, Reply

pytestmark = pytest.mark.no_database

MODEL = "gemini-3-pro-image"


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini() as server:
        yield server


def _with_client(
    fake: FakeGemini, scenario: Callable[[genai.Client], Awaitable[None]], api_key: str = ""
) -> None:
    """Run ``scenario`` with an SDK client of the fake, closed afterwards."""

    async def run() -> None:
        options = types.HttpOptions(base_url=fake.base_url)
        sdk = genai.Client(api_key=api_key or fake.api_key, http_options=options)
        try:
            await scenario(sdk)
        finally:
            await sdk.aio.aclose()

    asyncio.run(run())


def _inlined(prompt: str, key: str) -> types.InlinedRequest:
    return types.InlinedRequest(
        contents=[types.Content(role="user", parts=[types.Part(text=prompt)])],
        config=types.GenerateContentConfig(
            response_modalities=["TEXT", "IMAGE"],
            image_config=types.ImageConfig(aspect_ratio="16:9", image_size="1K"),
        ),
        metadata={"key": key},
    )


def test_an_inline_job_moves_through_its_states_as_the_test_says(fake: FakeGemini) -> None:
    async def scenario(client: genai.Client) -> None:
        job = await client.aio.batches.create(
            model=MODEL,
            src=[_inlined("a cat", "t1"), _inlined("a dog", "t2"), _inlined("a cow", "t3")],
            config={"display_name": "bananastand-job-1"},
        )
        assert job.name is not None
        assert job.state == types.JobState.JOB_STATE_PENDING
        assert job.display_name == "bananastand-job-1"
        seen = fake.batches.job(job.name)
        assert [key for key, _, _ in seen.requests] == ["t1", "t2", "t3"]
        assert seen.requests[0][1]["generationConfig"]["imageConfig"] == {
            "aspectRatio": "16:9",
            "imageSize": "1K",
        }

        fake.batches.set_state(job.name, "RUNNING")
        running = await client.aio.batches.get(name=job.name)
        assert running.state == types.JobState.JOB_STATE_RUNNING
        assert running.dest is None

        fake.script(Reply(), Reply(status=400, message="that prompt is not allowed"))
        fake.batches.complete(job.name)
        done = await client.aio.batches.get(name=job.name)
        assert done.state == types.JobState.JOB_STATE_SUCCEEDED
        assert done.dest is not None
        assert done.dest.inlined_responses is not None
        answers = done.dest.inlined_responses
        assert [answer.metadata for answer in answers] == [
            {"key": "t1"},
            {"key": "t2"},
            {"key": "t3"},
        ]
        assert answers[0].response is not None
        assert answers[0].error is None
        assert answers[1].response is None
        assert answers[1].error is not None
        assert answers[1].error.code == 3  # INVALID_ARGUMENT, as google.rpc.Status says it
        assert answers[1].error.message == "that prompt is not allowed"
        image = answers[2].response.candidates[0].content.parts[-1].inline_data  # type: ignore[index,union-attr]
        assert image is not None
        assert image.data
        assert image.data.startswith(b"\x89PNG")

    _with_client(fake, scenario)


@pytest.mark.parametrize(
    ("ending", "state"),
    [("fail", types.JobState.JOB_STATE_FAILED), ("expire", types.JobState.JOB_STATE_EXPIRED)],
)
def test_a_job_can_fail_or_expire(fake: FakeGemini, ending: str, state: types.JobState) -> None:
    async def scenario(client: genai.Client) -> None:
        job = await client.aio.batches.create(model=MODEL, src=[_inlined("a cat", "t1")])
        assert job.name is not None
        getattr(fake.batches, ending)(job.name)
        ended = await client.aio.batches.get(name=job.name)
        assert ended.state == state
        assert ended.dest is None

    _with_client(fake, scenario)


def test_jobs_are_listed_newest_first_across_pages(fake: FakeGemini) -> None:
    async def scenario(client: genai.Client) -> None:
        for index in range(3):
            await client.aio.batches.create(
                model=MODEL, src=[_inlined("x", "k")], config={"display_name": f"job-{index}"}
            )
        pager = await client.aio.batches.list(config={"page_size": 2})
        names = [job.display_name async for job in pager]
        assert names == ["job-2", "job-1", "job-0"]

    _with_client(fake, scenario)


def test_a_jsonl_file_job_through_the_files_api(fake: FakeGemini) -> None:
    async def scenario(client: genai.Client) -> None:
        lines = [
            {
                "key": "task-a",
                "request": {"contents": [{"role": "user", "parts": [{"text": "a"}]}]},
            },
            {
                "key": "task-b",
                "request": {"contents": [{"role": "user", "parts": [{"text": "b"}]}]},
            },
        ]
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        uploaded = await client.aio.files.upload(
            file=io.BytesIO(data), config={"mime_type": "application/jsonl", "display_name": "in"}
        )
        assert uploaded.name is not None
        assert uploaded.size_bytes == len(data)
        assert fake.batches.files[uploaded.name][1] == data

        job = await client.aio.batches.create(model=MODEL, src=uploaded.name)
        assert job.name is not None
        fake.script(Reply(status=500, message="boom"))
        fake.batches.complete(job.name)
        done = await client.aio.batches.get(name=job.name)
        assert done.dest is not None
        assert done.dest.file_name is not None
        output = await client.aio.files.download(file=done.dest.file_name)
        results = [json.loads(line) for line in output.splitlines()]
        assert [result["key"] for result in results] == ["task-a", "task-b"]
        assert results[0]["error"]["code"] == 13  # INTERNAL
        assert "candidates" in results[1]["response"]

    _with_client(fake, scenario)


def test_a_wrong_key_is_refused(fake: FakeGemini) -> None:
    async def scenario(client: genai.Client) -> None:
        with pytest.raises(errors.ClientError) as raised:
            await client.aio.batches.create(model=MODEL, src=[_inlined("a cat", "t1")])
        assert raised.value.code == 400
        assert fake.batches.jobs == []

    _with_client(fake, scenario, api_key="wrong")


def test_a_demo_fake_completes_its_jobs_once_they_are_old_enough(fake: FakeGemini) -> None:
    fake.batches.complete_after_s = 0.0  # at the first look

    async def scenario(client: genai.Client) -> None:
        job = await client.aio.batches.create(model=MODEL, src=[_inlined("a cat", "t1")])
        assert job.name is not None
        assert job.state == types.JobState.JOB_STATE_PENDING
        done = await client.aio.batches.get(name=job.name)
        assert done.state == types.JobState.JOB_STATE_SUCCEEDED

    _with_client(fake, scenario)

"""Acceptance: the client against a fake of the hosted API: not tied to bananastand's extras."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from bananastand.client import Client, NotFoundError, RetryPolicy, TransportError
from conftest import BIN
from hosted_fake import PNG, HostedFake

pytestmark = pytest.mark.no_database

QUICK = RetryPolicy(base_s=0.01)


def test_generate_against_the_hosted_shapes(hosted: HostedFake, tmp_path: Path) -> None:
    with Client(hosted.base_url, hosted.key) as client:
        assert client.credits() == 42
        seen: list[str] = []
        result = client.generate(
            "a banana",
            ["https://example.com/ref.png"],
            on_update=lambda task: seen.append(task.state),
        )
        with pytest.raises(NotFoundError):
            client.get("task_nano-banana-pro_0")
    assert re.fullmatch(r"task_nano-banana-pro_\d+", result.task.taskId)
    assert seen == ["waiting", "success"]
    assert result.task.request["input"]["image_input"] == ["https://example.com/ref.png"]
    assert result.images[0].data == PNG
    assert [path.name for path in result.save(tmp_path)] == [f"{result.task.taskId}.png"]


def test_create_task_is_never_sent_twice_without_an_idempotency_key(hosted: HostedFake) -> None:
    hosted.drop_creates = 1
    with Client(hosted.base_url, hosted.key, retry=QUICK) as client:
        with pytest.raises(TransportError):
            client.submit("a banana")
        assert hosted.create_calls == 1
        hosted.drop_creates = 1
        client.submit("a banana", idempotency_key="k-1")  # under a key: sent again
    assert hosted.create_calls == 3


def test_batch_marks_a_lost_answer_unknown_and_does_not_resend_it(
    hosted: HostedFake, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"p{n}"}) + "\n" for n in range(3)))
    out = tmp_path / "out"
    env = {**os.environ, "BANANASTAND_BASE_URL": hosted.base_url, "BANANASTAND_API_KEY": hosted.key}

    def batch(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(BIN / "bananastand"),
                "batch",
                str(prompts),
                "-o",
                str(out),
                "--concurrency",
                "1",
                *extra,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    hosted.drop_creates = 1
    first = batch()
    assert first.returncode == 1
    assert "line 1:" in first.stderr
    assert hosted.create_calls == 3
    assert sorted(p.name for p in out.glob("*.png")) == ["00002.png", "00003.png"]
    again = batch()
    assert again.returncode == 1, "an unknown line stays unknown"
    assert hosted.create_calls == 3
    resent = batch("--resubmit-unknown")
    assert resent.returncode == 0, resent.stderr
    assert hosted.create_calls == 4
    assert sorted(p.name for p in out.glob("*.png")) == ["00001.png", "00002.png", "00003.png"]


def test_wait_asks_for_a_stream_and_polls_on_after_a_json_answer(hosted: HostedFake) -> None:
    """The hosted API ignores ``Accept``: the JSON answer to the stream request is the
    first poll, and the wait polls on (plainly) until the task ends."""
    with Client(hosted.base_url, hosted.key, retry=QUICK) as client:
        first = client.submit("one")
        seen: list[str] = []
        done = client.wait(first, on_update=lambda task: seen.append(task.state))
        second = client.submit("two")
        again = client.wait(second, just_created=True)
    assert (done.state, again.state) == ("success", "success")
    assert seen == ["waiting", "success"]
    for task_id in (first, second):
        asked = [accept for polled, accept in hosted.accepts if polled == task_id]
        assert len(asked) == 2  # the fake answers waiting, then success
        assert asked[0] == "text/event-stream"
        assert "text/event-stream" not in (asked[1] or "")

"""Acceptance: the SDK (``bananastand.client``) against a real bananastand server on loopback."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image as PILImage

from accounts_helpers import ADMIN_TOKEN, admin_ok, new_account
from bananastand.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    FeatureDisabledError,
    GenerationFailedError,
    InsufficientCreditsError,
    MaintenanceError,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
    TimeoutError,
    TransportError,
    ValidationError,
)
from conftest import Server, free_port

NO_RETRY = RetryPolicy(max_attempts=1)


def png(color: str = "red", size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def tasks_on(server: Server, key: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    cursor = None
    while True:
        params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        answer = server.client.get(
            "/api/v1/jobs/list", params=params, headers={"Authorization": f"Bearer {key}"}
        ).json()
        items += answer["data"]["items"]
        cursor = answer["data"]["nextCursor"]
        if not cursor:
            return items


def test_importing_the_client_needs_nothing_of_the_server() -> None:
    # ``bananastand.cli`` too: the client commands share its entry point.
    blocked = ["sqlalchemy", "fastapi", "PIL", "uvicorn", "boto3", "google", "alembic", "starlette"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import bananastand.client, bananastand.client.cli, bananastand.cli\n"
        "from bananastand.client import Client, AsyncClient, verify_callback\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("output_format", "mime"), [("png", "image/png"), ("jpg", "image/jpeg"), ("webp", "image/webp")]
)
def test_generate_with_a_local_file_a_url_and_bytes(
    server: Server, tmp_path: Path, output_format: str, mime: str
) -> None:
    key = server.key()
    local = tmp_path / "ref.png"
    local.write_bytes(png("blue"))
    with Client(server.base_url, key) as client:
        linked = client.upload(png("green"), file_name="linked.png").downloadUrl
        result = client.generate(
            "a banana",
            [local, linked, png("yellow")],
            aspect_ratio="16:9",
            output_format=output_format,
        )
    assert result.task.state == "success"
    request = result.task.request
    assert len(request["input"]["image_input"]) == 3
    assert request["input"]["image_input"][1] == linked
    [image] = result.images
    assert image.mime_type == mime
    assert image.url == result.task.result_urls[0]
    assert PILImage.open(io.BytesIO(image.data)).size == (1376, 768)
    [saved] = result.save(tmp_path / "out")
    assert saved.read_bytes() == image.data
    assert saved.suffix == {"png": ".png", "jpg": ".jpg", "webp": ".webp"}[output_format]


def test_environment_variables_configure_the_client(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BANANASTAND_BASE_URL", server.base_url)
    monkeypatch.setenv("BANANASTAND_API_KEY", server.key())
    with Client() as client:
        task_id = client.submit("from the environment")
        assert client.wait(task_id).state == "success"


def test_submit_get_wait_cancel(server: Server) -> None:
    key = server.key()
    with Client(server.base_url, key) as client:
        task_id = client.submit("slow [sandbox:delay=100]", resolution="2K")
        first = client.get(task_id)
        assert first.taskId == task_id
        assert first.request["input"]["resolution"] == "2K"
        done = client.wait(task_id)
        assert done.state == "success"
        assert len(done.result_urls) == 1


def test_cancel_a_waiting_task(start_server: Callable[..., Server]) -> None:
    server = start_server(run_worker=False)
    with Client(server.base_url, server.key()) as client:
        task_id = client.submit("never runs")
        canceled = client.cancel(task_id)
        assert canceled.state == "fail"
        assert canceled.failMsg == "canceled"
        with pytest.raises(GenerationFailedError) as failed:
            client.wait(task_id)
        assert failed.value.fail_code == "400"


def test_wait_times_out_with_the_last_record(start_server: Callable[..., Server]) -> None:
    server = start_server(run_worker=False)
    with Client(server.base_url, server.key()) as client:
        task_id = client.submit("never runs")
        with pytest.raises(TimeoutError) as waited:
            client.wait(task_id, timeout=0.3)
    assert waited.value.task is not None
    assert waited.value.task.state == "waiting"


def test_generation_failed_carries_fail_code_and_msg(server: Server) -> None:
    with (
        Client(server.base_url, server.key()) as client,
        pytest.raises(GenerationFailedError) as failed,
    ):
        client.generate("[sandbox:fail=safety]")
    assert failed.value.fail_code == "403"
    assert failed.value.fail_msg
    assert failed.value.task.state == "fail"


def test_credits_of_a_live_key(start_server: Callable[..., Server]) -> None:
    server = start_server(live_provider="sandbox", admin_token=ADMIN_TOKEN)
    _, key = new_account(server, credits=100)
    with Client(server.base_url, key) as client:
        assert client.credits() == 100
        client.generate("charged", resolution="4K")
        assert client.credits() == 100 - 24


def test_each_envelope_code_is_a_typed_error(start_server: Callable[..., Server]) -> None:
    server = start_server(admin_token=ADMIN_TOKEN)
    with Client(server.base_url, "bs_test_not-a-key", retry=NO_RETRY) as client:
        with pytest.raises(AuthenticationError) as auth:
            client.credits()
        assert auth.value.code == 401
    _, broke = new_account(server)
    with (
        Client(server.base_url, broke, retry=NO_RETRY) as client,
        pytest.raises(FeatureDisabledError),  # live key, no live provider
    ):
        client.submit("a banana")
    with Client(server.base_url, server.key(), retry=NO_RETRY) as client:
        with pytest.raises(NotFoundError):
            client.get("task_does-not-exist")
        with pytest.raises(ValidationError) as invalid:
            client.submit("a banana", aspect_ratio="7:5")
        assert "aspect_ratio" in invalid.value.msg
        admin_ok(server, "POST", "/admin/maintenance", {"on": True, "message": "back soon"})
        with pytest.raises(MaintenanceError) as maintenance:
            client.submit("a banana")
        assert maintenance.value.msg == "back soon"


def test_no_credits_is_402(start_server: Callable[..., Server]) -> None:
    server = start_server(live_provider="sandbox", starting_credits=0)
    key = server.key(test=False)
    with (
        Client(server.base_url, key, retry=NO_RETRY) as client,
        pytest.raises(InsufficientCreditsError),
    ):
        client.generate("a banana")
    assert tasks_on(server, key) == []


def test_rate_limit_is_429_with_retry_after(start_server: Callable[..., Server]) -> None:
    server = start_server(create_rate="1/minute")
    with Client(server.base_url, server.key(), retry=NO_RETRY) as client:
        client.submit("first")
        with pytest.raises(RateLimitError) as limited:
            client.submit("second")
    assert limited.value.retry_after is not None
    assert limited.value.retry_after > 0


def test_a_429_is_retried_after_retry_after(start_server: Callable[..., Server]) -> None:
    server = start_server(read_rate="1/second")
    retries: list[tuple[Exception, float]] = []
    with Client(
        server.base_url,
        server.key(),
        on_retry=lambda _r, error, delay: retries.append((error, delay)),
    ) as client:
        task_id = client.submit("a banana")
        client.get(task_id)
        record = client.get(task_id)  # over the limit: 429, then success
    assert record.taskId == task_id
    assert retries, "the second read within the second should have been refused once"
    error, delay = retries[0]
    assert isinstance(error, RateLimitError)
    assert error.retry_after is not None
    assert delay >= error.retry_after


def test_generate_sends_one_idempotency_key_so_a_replay_makes_no_second_task(
    server: Server,
) -> None:
    key = server.key()
    idem = str(uuid.uuid4())
    with Client(server.base_url, key) as client:
        first = client.generate("same", idempotency_key=idem)
        second = client.generate("same", idempotency_key=idem)
    assert first.task.taskId == second.task.taskId
    assert len(tasks_on(server, key)) == 1


def test_network_errors_are_transport_errors() -> None:
    with (
        Client(
            f"http://127.0.0.1:{free_port()}", "k", retry=RetryPolicy(max_attempts=2, base_s=0.01)
        ) as client,
        pytest.raises(TransportError),
    ):
        client.credits()


def test_async_client_runs_many_at_once(server: Server, tmp_path: Path) -> None:
    key = server.key()
    local = tmp_path / "ref.png"
    local.write_bytes(png())

    async def main() -> list[str]:
        async with AsyncClient(server.base_url, key) as client:
            results = await asyncio.gather(
                *(client.generate(f"banana {n}", [local], output_format="jpg") for n in range(5))
            )
            assert await client.credits() == 0  # test keys are never charged
            return [result.images[0].mime_type for result in results]

    assert asyncio.run(main()) == ["image/jpeg"] * 5
    assert len(tasks_on(server, key)) == 5


def test_result_links_are_downloaded_without_the_key(server: Server) -> None:
    with Client(server.base_url, server.key()) as client:
        task = client.wait(client.submit("a banana"))
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> None:
        seen.append(request)

    http = httpx.Client(event_hooks={"request": [record]})
    with Client(server.base_url, server.key(), http=http) as client:
        result = client.result(task)
    assert result.images[0].data.startswith(b"\x89PNG")
    assert "authorization" not in seen[-1].headers


@pytest.mark.parametrize("max_requests", [None, 2])
def test_max_requests_bounds_the_requests_in_flight(
    server: Server, max_requests: int | None
) -> None:
    key = server.key()
    with Client(server.base_url, key) as sync:
        task_id = sync.submit("a banana")
    in_flight = 0
    most = 0

    async def sent(_request: httpx.Request) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)

    async def answered(_response: httpx.Response) -> None:
        nonlocal in_flight
        in_flight -= 1

    async def main() -> list[str]:
        http = httpx.AsyncClient(event_hooks={"request": [sent], "response": [answered]})
        client = AsyncClient(server.base_url, key, http=http, max_requests=max_requests)
        async with client:
            records = await asyncio.gather(*(client.get(task_id) for _ in range(10)))
        return [record.taskId for record in records]

    assert asyncio.run(main()) == [task_id] * 10
    if max_requests is None:
        assert most > 2  # ten at once: the bound below is max_requests' doing
    else:
        assert most == max_requests

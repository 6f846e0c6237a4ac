"""Integration: links are made when they are handed out, so they survive a move.

A server restarted on another port (or behind another public URL) on the same data folder
hands out working links for old tasks in recordInfo, the list, event streams and callback
retries; a database written before links were made at hand-out time is migrated to keys.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from alembic import command
from sqlalchemy import inspect, text, update

from bananastand.store import migrate
from bananastand.store.tables import callbacks
from conftest import Server, make_key, prompt_body, rows_of, running_server
from receiver import Answer, Receiver
from test_files_api import (
    URL_UPLOAD,
    account_of,
    answer_of,
    auth,
    png,
    signer,
    stream_upload,
    uploaded,
)
from test_webhooks import create_with_callback, wait_info

#: A callback that failed once is retried an hour later: never by the first server.
HOUR_LATER = {
    "allow_private_networks": ["127.0.0.1"],
    "webhook_retry_schedule_seconds": [0.0, 3600.0],
    "webhook_timeout_seconds": 2.0,
}


def result_urls(record: dict[str, Any]) -> list[str]:
    urls: list[str] = json.loads(record["resultJson"])["resultUrls"]
    return urls


def downloads(url: str) -> bool:
    response = httpx.get(url)
    return response.status_code == 200 and response.content.startswith(b"\x89PNG")


def listed(server: Server, key: str) -> list[dict[str, Any]]:
    answer = server.client.get("/api/v1/jobs/list", headers=auth(key)).json()
    assert answer["code"] == 200, answer
    items: list[dict[str, Any]] = answer["data"]["items"]
    return items


def streamed(server: Server, key: str, task_id: str) -> dict[str, Any]:
    """The first record of recordInfo's event stream (an ended task: its last one)."""
    headers = {**auth(key), "Accept": "text/event-stream"}
    params = {"taskId": task_id}
    with server.client.stream(
        "GET", "/api/v1/jobs/recordInfo", params=params, headers=headers
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                record: dict[str, Any] = json.loads(line.removeprefix("data: "))
                return record
    raise AssertionError("the stream ended without a record")


@contextlib.contextmanager
def serving(data_dir: Path, **overrides: Any) -> Iterator[Server]:
    """A server that has stopped when the block ends: the next one may take its data folder."""
    with running_server(data_dir, **overrides) as server:
        yield server


def test_a_moved_server_hands_out_working_links_for_old_tasks(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with serving(data_dir) as before:
        key = make_key(data_dir)
        task_id = before.create(key, prompt_body())["data"]["taskId"]
        record = before.wait(key, task_id)
        [old_link] = result_urls(record)
        assert old_link.startswith(before.base_url + "/files/")
        assert downloads(old_link)
        # The same record gives the same link on every read.
        assert result_urls(before.record(key, task_id)["data"]) == [old_link]
        expires = int(old_link.split("/files/")[1].split("/")[0])
        assert expires == record["completeTime"] // 1000 + before.settings.result_link_seconds

    with serving(data_dir) as after:
        assert after.base_url != before.base_url
        assert not downloads_or_refused(old_link)  # nobody serves the old port any more
        [new_link] = result_urls(after.record(key, task_id)["data"])
        assert new_link.startswith(after.base_url + "/files/")
        assert new_link.split("/files/")[1] == old_link.split("/files/")[1]  # same expiry
        assert downloads(new_link)
        [item] = listed(after, key)
        assert result_urls(item) == [new_link]
        assert result_urls(streamed(after, key, task_id)) == [new_link]
        # An old link is still one of ours: download-url refreshes it.
        fresh = after.client.post(
            "/api/v1/common/download-url", headers=auth(key), json={"url": old_link}
        ).json()
        assert fresh["code"] == 200, fresh
        assert fresh["data"].startswith(after.base_url + "/files/")
        assert downloads(fresh["data"])

    with serving(data_dir, public_url="http://localhost.invalid") as behind_a_domain:
        [domain_link] = result_urls(behind_a_domain.record(key, task_id)["data"])
        assert domain_link.startswith("http://localhost.invalid/files/")
        path = domain_link.removeprefix("http://localhost.invalid")
        assert downloads(behind_a_domain.base_url + path)


def downloads_or_refused(url: str) -> bool:
    try:
        return downloads(url)
    except httpx.ConnectError:
        return False


def test_a_callback_retried_after_a_move_carries_the_new_links(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    receiver = Receiver(script=[Answer(status=500)])
    try:
        with serving(data_dir, **HOUR_LATER) as before:
            key = make_key(data_dir)
            task_id = create_with_callback(before, key, receiver.url)
            first = wait_info(before, key, task_id, lambda info: len(info["attempts"]) == 1)
            assert first["deliveryState"] == "pending"
        # The hour has passed (the retry is due) when the server comes back elsewhere.
        with rows_of(data_dir) as connection:
            connection.execute(update(callbacks).values(next_attempt_at=0))
        with serving(data_dir, **HOUR_LATER) as after:
            info = wait_info(after, key, task_id, lambda info: info["deliveryState"] == "delivered")
            assert info["webhookId"] == first["webhookId"]
        [failed, retried] = [json.loads(request.body)["data"] for request in receiver.requests]
    finally:
        receiver.close()
    [old_link] = result_urls(failed)
    [new_link] = result_urls(retried)
    assert old_link.startswith(before.base_url + "/files/")
    assert new_link.startswith(after.base_url + "/files/")
    assert new_link.split("/files/")[1] == old_link.split("/files/")[1]
    with serving(data_dir) as again:
        path = new_link.removeprefix(after.base_url)
        assert downloads(again.base_url + path)


def test_stored_links_are_migrated_to_keys(tmp_path: Path) -> None:
    """A database as the last version without 0007 left it: result links, not keys."""
    data_dir = tmp_path / "data"
    with serving(data_dir) as before:
        key = make_key(data_dir)
        task_id = before.create(key, prompt_body())["data"]["taskId"]
        [old_link] = result_urls(before.wait(key, task_id))
    with rows_of(data_dir) as connection:
        stored_keys = connection.execute(text("SELECT result_keys FROM tasks")).scalar_one()
        assert json.loads(stored_keys) == [old_link.split("/", 6)[-1]]
        # Revisions after 0007 undone as they undo themselves; 0007 by hand, below.
        config = migrate.alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, "0007")
        # What revision 0006 stored: the link itself, made for the server of the time.
        connection.execute(
            text("ALTER TABLE tasks ADD COLUMN result_json TEXT NOT NULL DEFAULT ''")
        )
        connection.execute(
            text("UPDATE tasks SET result_json = :links"),
            {"links": json.dumps({"resultUrls": [old_link]})},
        )
        connection.execute(text("ALTER TABLE tasks DROP COLUMN result_keys"))
        connection.execute(text("UPDATE alembic_version SET version_num = '0006'"))

    with serving(data_dir) as after:
        [new_link] = result_urls(after.record(key, task_id)["data"])
        assert new_link == after.base_url + old_link.removeprefix(before.base_url)
        assert downloads(new_link)
    with rows_of(data_dir) as connection:
        columns = [column["name"] for column in inspect(connection).get_columns("tasks")]
    assert "result_json" not in columns


def test_file_url_upload_takes_our_own_links_from_storage(server: Server) -> None:
    """No allow-list for loopback: our own links are read from storage, not fetched."""
    alice, bob = server.key(), server.key()
    upload = uploaded(stream_upload(server, alice, png("green")))["downloadUrl"]
    task_id = server.create(alice, prompt_body())["data"]["taskId"]
    [result] = result_urls(server.wait(alice, task_id))

    for url, name in ((upload, "again.png"), (result, "")):
        answer = answer_of(
            server.client.post(
                URL_UPLOAD,
                headers=auth(alice),
                json={"fileUrl": url, "uploadPath": "copies", "fileName": name},
            )
        )
        copy = uploaded(answer)
        assert copy["filePath"].startswith("copies/")
        assert copy["downloadUrl"] != url
        assert downloads(copy["downloadUrl"])
    assert copy["filePath"] == "copies/" + result.rsplit("/", 1)[1]

    def refused(key: str, url: str) -> str:
        answer = answer_of(
            server.client.post(
                URL_UPLOAD, headers=auth(key), json={"fileUrl": url, "uploadPath": "x"}
            )
        )
        assert answer["code"] == 422, answer
        message: str = answer["msg"]
        return message

    # Another account's file is as unknown as a missing one.
    missing = signer(server).url(f"uploads/{account_of(server, alice)}/gone.png", 2**32)
    assert refused(alice, missing) == "fileUrl: no such file on this server"
    assert refused(bob, upload) == refused(bob, result) == "fileUrl: no such file on this server"
    assert "not one this server made" in refused(alice, upload[:-5] + "x.png")

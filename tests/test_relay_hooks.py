"""Integration: an upstream's callback, verified against the upstream's secret, names our task
on the wake-ups (which carry it to every process) and nothing else; on this run's database."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from bananastand.client.webhooks import sign_hosted, sign_standard
from bananastand.providers.relay_hooks import HookOutcome, UpstreamHooks
from bananastand.store.ports import Store
from bananastand.wakeups import Topic, Wakeups
from conftest import DATABASE
from store_helpers import ADAPTERS, FakeClock, add_tasks, scenario

HOSTED_SECRET = "kie-account-secret"
PEER_SECRET = "whsec_cGVlci1zZWNyZXQtb2YtMzItYnl0ZXMtZm9yLXRlc3Q="


def hosted_callback(task_id: str, secret: str) -> tuple[bytes, dict[str, str]]:
    """A callback as the hosted API sends it: its signature covers taskId.timestamp."""
    body = orjson.dumps({"code": 200, "msg": "success", "data": {"taskId": task_id}})
    timestamp = int(time.time())
    headers = {
        "X-Webhook-Timestamp": str(timestamp),
        "X-Webhook-Signature": sign_hosted(secret, task_id, timestamp),
    }
    return body, headers


@pytest.fixture
def store(tmp_path: Path) -> Store:
    adapter = ADAPTERS[DATABASE](tmp_path)
    return adapter.open(adapter.new_database(tmp_path), FakeClock())


@scenario
async def test_a_verified_callback_wakes_the_task_it_names_and_no_other(store: Store) -> None:
    try:
        ours, peers = await add_tasks(store, 2)
        await store.claim_tasks(worker_id="w", lease_token="lease", limit=2, lease_ms=60_000)
        assert await store.mark_generating(ours, "lease", upstream="kie", handle="up-1")
        assert await store.mark_generating(peers, "lease", upstream="peer", handle="up-2")
        wakeups = Wakeups()
        heard: list[frozenset[str] | None] = []
        wakeups.subscribe(Topic.TASKS, heard.append)
        hooks = UpstreamHooks(
            {"kie": HOSTED_SECRET, "peer": PEER_SECRET, "mute": ""}, store, wakeups
        )

        body, headers = hosted_callback("up-1", HOSTED_SECRET)
        assert await hooks.receive("kie", body, headers) is HookOutcome.NUDGED
        assert heard == [frozenset({ours})]

        # Forged, or for another upstream's task, or for an upstream without a secret.
        forged_body, forged = hosted_callback("up-1", "a guess")
        assert await hooks.receive("kie", forged_body, forged) is HookOutcome.REFUSED
        other_body, other = hosted_callback("up-2", HOSTED_SECRET)
        assert await hooks.receive("kie", other_body, other) is HookOutcome.NO_TASK
        assert await hooks.receive("mute", body, headers) is HookOutcome.UNKNOWN_UPSTREAM
        assert await hooks.receive("nobody", body, headers) is HookOutcome.UNKNOWN_UPSTREAM
        assert heard == [frozenset({ours})]

        # Another bananastand signs Standard Webhooks too (covering the body): checked first.
        peer_body = orjson.dumps({"code": 200, "msg": "success", "data": {"taskId": "up-2"}})
        timestamp = int(time.time())
        standard = {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_standard(PEER_SECRET, "msg_1", timestamp, peer_body),
        }
        assert await hooks.receive("peer", peer_body, standard) is HookOutcome.NUDGED
        tampered = peer_body.replace(b"success", b"SUCCESS")
        assert await hooks.receive("peer", tampered, standard) is HookOutcome.REFUSED
        assert heard == [frozenset({ours}), frozenset({peers})]
    finally:
        await store.close()

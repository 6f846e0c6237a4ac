"""Acceptance: several ``bananastand worker`` processes sharing one upstream budget drive the
(fake) Gemini API no harder together than the budget allows: in Redis, or without it split
among the live workers that the registry counts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from bananastand.fake_gemini import FakeGemini
from bananastand.store.tables import workers as registry
from conftest import Server, ServerProcess, prompt_body, rows_of
from waiting import wait_for

PER_MINUTE = 60  # the cluster's budget: one start a second
TASKS = 6
WINDOW_S = 2.5  # spaced starts put at most 3 calls in it; unshared, 2 workers put all 6


HEARTBEAT_S = 2


def each_knows_of_all(data_dir: Path, count: int) -> bool:
    """Whether ``count`` workers are registered and each has beaten a whole interval
    after the last of them registered: that one's row was committed long before, so each
    one's count of live workers includes them all."""
    with rows_of(data_dir) as connection:
        rows = connection.execute(select(registry.c.started_at, registry.c.heartbeat_at)).all()
    if len(rows) != count:
        return False
    last_start = max(started for started, _ in rows)
    return all(beat >= last_start + HEARTBEAT_S * 1000 for _, beat in rows)


@pytest.mark.parametrize("shared_by", ["redis", "registry"])
def test_worker_processes_share_the_per_minute_budget(
    start_server: Callable[..., Server],
    spawn: Callable[..., ServerProcess],
    request: pytest.FixtureRequest,
    shared_by: str,
) -> None:
    """With Redis, starts are spaced across the cluster; without it, each of the 2 workers
    takes half the budget (one start per 2 s), which puts at most 4 in a window too."""
    with FakeGemini() as fake:
        google = {"GOOGLE_API_KEY": fake.api_key, "GOOGLE_GEMINI_BASE_URL": fake.base_url}
        api = start_server(run_worker=False, billing=False, live_provider="gemini", **google)
        env = {
            **google,
            "BANANASTAND_DATA_DIR": str(api.data_dir),
            "BANANASTAND_BILLING": "false",
            "BANANASTAND_LIVE_PROVIDER": "gemini",
            **(
                {"BANANASTAND_REDIS_URL": request.getfixturevalue("redis_url")}
                if shared_by == "redis"
                else {"BANANASTAND_WORKER_HEARTBEAT_SECONDS": str(HEARTBEAT_S)}
            ),
            "BANANASTAND_UPSTREAM_REQUESTS_PER_MINUTE": str(PER_MINUTE),
            # Half the tasks each: one worker alone cannot take them all, and each could
            # call for all of its own at once (only the budget paces them).
            "BANANASTAND_WORKER_CONCURRENCY": str(TASKS // 2),
        }
        workers = [spawn("worker", "--no-migrate", env=env) for _ in range(2)]
        wait_for(
            lambda: all("worker started" in worker.log() for worker in workers),
            what=lambda: f"both workers started: {[worker.log() for worker in workers]}",
            timeout=120,
            interval=0.1,
        )
        if shared_by == "registry":
            wait_for(
                lambda: each_knows_of_all(api.data_dir, 2),
                what="the workers counted each other",
                timeout=120,
                interval=0.1,
            )
        key = api.key(test=False)
        created = [api.create(key, prompt_body(f"banana {n}")) for n in range(TASKS)]
        for answer in created:
            assert api.wait(key, answer["data"]["taskId"], timeout=120)["state"] == "success"
        arrivals = sorted(seen.received_at for seen in fake.requests)
    assert len(arrivals) == TASKS
    busiest = max(
        sum(1 for later in arrivals if first <= later < first + WINDOW_S) for first in arrivals
    )
    assert busiest <= 4  # 3 when spaced exactly; one more of slack for a busy machine
    claimed = [worker.log().count("task claimed") for worker in workers]
    assert sum(claimed) == TASKS
    assert min(claimed) >= 1, claimed  # both workers called Google: the budget was shared

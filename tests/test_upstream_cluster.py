"""Acceptance: several ``bananastand worker`` processes sharing one upstream budget in Redis
drive the (fake) Gemini API no harder together than the budget allows."""

from __future__ import annotations

import time
from collections.abc import Callable

from bananastand.fake_gemini import FakeGemini
from conftest import Server, ServerProcess, prompt_body

PER_MINUTE = 60  # the cluster's budget: one start a second
TASKS = 6
WINDOW_S = 2.5  # spaced starts put at most 3 calls in it; unshared, 2 workers put all 6


def test_worker_processes_share_the_per_minute_budget(
    start_server: Callable[..., Server],
    spawn: Callable[..., ServerProcess],
    redis_url: str,
) -> None:
    with FakeGemini() as fake:
        google = {"GOOGLE_API_KEY": fake.api_key, "GOOGLE_GEMINI_BASE_URL": fake.base_url}
        api = start_server(run_worker=False, billing=False, live_provider="gemini", **google)
        env = {
            **google,
            "BANANASTAND_DATA_DIR": str(api.data_dir),
            "BANANASTAND_BILLING": "false",
            "BANANASTAND_LIVE_PROVIDER": "gemini",
            "BANANASTAND_REDIS_URL": redis_url,
            "BANANASTAND_UPSTREAM_REQUESTS_PER_MINUTE": str(PER_MINUTE),
            # Half the tasks each: one worker alone cannot take them all, and each could
            # call for all of its own at once (only the budget paces them).
            "BANANASTAND_WORKER_CONCURRENCY": str(TASKS // 2),
        }
        workers = [spawn("worker", "--no-migrate", env=env) for _ in range(2)]
        deadline = time.monotonic() + 120
        while not all("worker started" in worker.log() for worker in workers):
            assert time.monotonic() < deadline, [worker.log() for worker in workers]
            time.sleep(0.1)
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

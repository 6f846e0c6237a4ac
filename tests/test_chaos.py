"""Acceptance: nothing is lost while processes are killed (the small run of bench/chaos.py).

Two API processes and three workers on this run's database, workers SIGKILLed every
1-3 s, one API killed twice, a callback receiver that fails or hangs on some first
deliveries. On PostgreSQL it is the topology of ``compose.yaml`` without containers
(Redis for the shared limits, S3 for files, every database connection terminated once);
on SQLite the one-machine one (WAL, files on local disk). The driver is the benchmark's
own (``bench/chaos.py``, run there with 1,000 tasks); here it runs 60 and kills workers
8 times (the benchmark kills them until every task has ended), with the same
checks: every task final and right, no duplicates, every callback delivered and signed,
every result downloadable, the ledger audited and the balance exact.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import DATABASE, S3Server, database_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import chaos  # bench/ is not a package: it is put on the path above

TASKS = 60
#: Enough kills to catch workers mid-task many times over (each holds up to 16 tasks),
#: few enough that the run ends in seconds rather than minutes on a busy machine.
WORKER_KILLS = 8


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> dict[str, str]:
    """On PostgreSQL, Redis and S3 as a deployment has them; on SQLite, nothing more."""
    if DATABASE == "sqlite":
        return {}
    redis_url: str = request.getfixturevalue("redis_url")
    s3: S3Server = request.getfixturevalue("s3_server")
    return {
        "BANANASTAND_REDIS_URL": redis_url,
        **{
            f"BANANASTAND_{name.upper()}": value
            for name, value in s3.settings(s3.new_bucket()).items()
        },
    }


def test_a_cluster_under_faults_loses_nothing(tmp_path: Path, topology: dict[str, str]) -> None:
    data_dir = tmp_path / "data"
    url = database_settings(data_dir).get("database_url", "")
    plan = chaos.Plan(
        TASKS, data_dir, url, settings=topology, worker_kills=WORKER_KILLS, say=lambda _: None
    )
    report = chaos.run(plan)
    print("\n".join(report.lines()))
    assert report.problems == []
    counts = report.counts
    assert counts["tasks final and right"] == TASKS
    assert counts["duplicate tasks"] == 0
    assert counts["task rows in the database"] == TASKS
    assert counts["tasks called back (2xx received)"] == TASKS
    assert counts["results downloadable"] == TASKS - TASKS // 10  # every tenth is told to fail
    assert counts["credits audit exit status"] == 0
    assert counts["balance"] == counts["balance expected"]
    # The faults really happened: the run is not a quiet one that passes by luck.
    assert 1 <= counts["worker kills"] <= WORKER_KILLS
    assert counts["api kills"] == 2
    assert counts["first deliveries answered 500"] == TASKS // 10 - 1  # one of them hangs
    assert counts["first deliveries left hanging"] == 1
    if url:
        assert counts["pg kills"] >= 1

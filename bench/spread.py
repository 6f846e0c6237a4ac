"""What the same Python work costs when it is spread over more processes on this host.

    .venv/bin/python bench/spread.py [--processes 1,2,4,8] [--events 8000] [--rounds 2]

A feeder sends ``--events`` events one at a time, each answered before the next, round
robin to N child processes; each event is the same small piece of a worker's Python (a
fenced UPDATE built and compiled by SQLAlchemy Core, a wake-up message encoded and
decoded). Nothing is shared: no database, no lock, no GIL between processes. The figure
is the children's CPU per event, their warm-up left out. On a host with fewer cores
than processes, each event lands in a process whose caches the others have used since
its last one: what ``scale.py``'s workers part sees as CPU per task growing with worker
processes, with no contention to blame.
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import time
from collections.abc import Sequence
from multiprocessing import Process

import orjson
from sqlalchemy import and_, update

from bananastand.store.tables import tasks

#: Events each child runs before its CPU is read: imports and first compiles are not
#: what is measured.
WARM_UP = 200


def one_event(n: int) -> int:
    statement = (
        update(tasks)
        .where(
            and_(
                tasks.c.id == f"task-{n}",
                tasks.c.lease_token == "token",
                tasks.c.state.in_(["queuing", "generating"]),
            )
        )
        .values(state="success", updated_at=n)
    )
    statement.compile()
    message = {"from": "hub", "topics": ["tasks"], "tasks": [f"task-{n}"] * 5}
    return len(orjson.loads(orjson.dumps(message))["tasks"])


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(link: socket.socket) -> None:
    """Answers each event after running it; at ``stop``, its events and CPU seconds."""
    for n in range(WARM_UP):
        one_event(n)
    began, done = cpu_s(), 0
    while link.recv(16) == b"go":
        one_event(done)
        done += 1
        link.send(b"k")
    link.send(orjson.dumps([done, cpu_s() - began]))


def spread(processes: int, events: int) -> tuple[float, float]:
    """(children's CPU microseconds per event, events per second) for one count."""
    links = [socket.socketpair() for _ in range(processes)]
    children = [Process(target=child, args=(theirs,)) for _, theirs in links]
    for started in children:
        started.start()
    began = time.perf_counter()
    for n in range(events):
        ours = links[n % processes][0]
        ours.send(b"go")
        ours.recv(1)
    seconds = time.perf_counter() - began
    done, spent = 0, 0.0
    for ours, _ in links:
        ours.send(b"stop")
        count, cpu = orjson.loads(ours.recv(64))
        done, spent = done + count, spent + cpu
    for ended in children:
        ended.join()
    return spent * 1e6 / done, events / seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2,4,8")
    parser.add_argument("--events", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=2, help="each count this many times")
    args = parser.parse_args(argv)
    counts = [int(count) for count in args.processes.split(",")]
    print(f"{'processes':>9} {'us CPU/event':>12} {'events/s':>9}")
    for _ in range(args.rounds):
        for count in counts:
            per_event, rate = spread(count, args.events)
            print(f"{count:>9} {per_event:>12.0f} {rate:>9.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Acceptance: wake-ups between processes: the hub, each bus, and real processes that only
wake-ups can set going.

The process tests set every fallback poll to a minute: what happens within their
deadlines can only have been started by a wake-up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select, text

from accounts_helpers import ADMIN_TOKEN
from bananastand.accounts import hash_secret
from bananastand.store.tables import api_keys
from bananastand.wakeups import MAX_NAMED_TASKS, Message, Topic, Wakeups
from bananastand.wakeups.postgres import PostgresBus
from bananastand.wakeups.sockets import SocketBus, folder_for
from conftest import (
    ServerProcess,
    cli,
    make_key,
    postgres_server,
    rows_of,
)
from processes import Spawn, create, wait_record
from store_helpers import scenario
from test_events import in_lifecycle_order, items, records, stream
from waiting import DEADLINE_S, wait_for, wait_for_async

Heard = list[tuple[Topic, frozenset[str] | None]]

#: How long a process test waits for what a wake-up starts: well inside the minute that
#: every fallback poll below waits, so nothing it sees can have come from a poll.
WITHIN_S = 40
#: No fallback poll within a test's time: only a wake-up makes things happen.
NO_POLLS = {
    "BANANASTAND_POLL_INTERVAL_SECONDS": "60",
    "BANANASTAND_EVENTS_POLL_MS": "60000",
    "BANANASTAND_KEY_CACHE_SECONDS": "600",
    "BANANASTAND_SWITCH_POLL_SECONDS": "600",
}


class RecordingBus:
    """A bus that keeps what it was asked to send, and can hold a send back."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def start(self, receive: Callable[[bytes | str], None], reconnected: object) -> None:
        self.receive = receive

    async def send(self, payload: bytes) -> None:
        await self.gate.wait()
        message = Message.decode(payload)
        assert message is not None
        self.sent.append(message)

    async def aclose(self) -> None:
        pass


def listening(hub: Wakeups) -> Heard:
    heard: Heard = []
    for topic in Topic:
        hub.subscribe(topic, lambda ids, topic=topic: heard.append((topic, ids)))
    return heard


async def until(condition: Callable[[], bool]) -> None:
    await wait_for_async(condition, what="the condition came true", interval=0.01)


# -- the hub -------------------------------------------------------------------------------


@scenario
async def test_what_is_published_during_a_send_goes_out_as_one_message() -> None:
    bus = RecordingBus()
    hub = Wakeups(bus)
    heard = listening(hub)
    await hub.start()
    bus.gate.clear()  # the first send waits
    hub.publish(Topic.WORK)
    await asyncio.sleep(0.05)
    for task_id in ("t1", "t2", "t3"):
        hub.publish(Topic.TASKS, [task_id])
    hub.publish(Topic.CONFIG)
    bus.gate.set()
    await until(lambda: len(bus.sent) == 2)
    await hub.aclose()
    first, second = bus.sent
    assert first.topics == {Topic.WORK}
    assert second.topics == {Topic.TASKS, Topic.CONFIG}
    assert second.task_ids == {"t1", "t2", "t3"}
    assert len(bus.sent) == 2
    # This process's subscribers heard every change at once, one by one.
    assert [topic for topic, _ in heard] == [Topic.WORK, *[Topic.TASKS] * 3, Topic.CONFIG]


@scenario
async def test_due_callbacks_stay_with_a_process_that_sends_callbacks() -> None:
    """A process with a callback sender sends the callbacks of the tasks it ended: the
    other processes' senders are not woken to claim what it takes; a process without one
    (an API process, an admin command) tells the others."""
    bus = RecordingBus()
    sender_here = Wakeups(bus)
    heard = listening(sender_here)
    await sender_here.start()
    sender_here.publish(Topic.CALLBACKS)
    sender_here.publish(Topic.TASKS, ["t1"])
    await until(lambda: len(bus.sent) == 1)
    await sender_here.aclose()
    assert [topic for topic, _ in heard] == [Topic.CALLBACKS, Topic.TASKS]
    assert [message.topics for message in bus.sent] == [{Topic.TASKS}]

    bus = RecordingBus()
    no_sender = Wakeups(bus)
    await no_sender.start()
    no_sender.publish(Topic.CALLBACKS)
    await no_sender.aclose()
    assert [message.topics for message in bus.sent] == [{Topic.CALLBACKS}]


@scenario
async def test_tasks_changed_waits_to_gather_more_and_goes_with_anything_else() -> None:
    """A message that only says tasks changed (for the API's event streams) waits a
    moment for more, since it wakes every process; work published meanwhile sends it.
    The moment is made longer than the test, so that a busy host, however slow between
    two of its steps, cannot end it first."""
    bus = RecordingBus()
    hub = Wakeups(bus, tasks_gap_s=DEADLINE_S)
    await hub.start()
    hub.publish(Topic.TASKS, ["t1"])
    for _ in range(5):
        await asyncio.sleep(0)  # the send loop runs, and waits for more
    hub.publish(Topic.TASKS, ["t2"])
    for _ in range(5):
        await asyncio.sleep(0)
    assert bus.sent == []
    hub.publish(Topic.WORK)
    await until(lambda: len(bus.sent) == 1)
    await hub.aclose()
    [message] = bus.sent
    assert (message.topics, message.task_ids) == ({Topic.TASKS, Topic.WORK}, {"t1", "t2"})


@scenario
async def test_too_many_tasks_are_sent_as_any_task() -> None:
    bus = RecordingBus()
    hub = Wakeups(bus)
    await hub.start()
    bus.gate.clear()
    hub.publish(Topic.CONFIG)
    await asyncio.sleep(0.05)
    hub.publish(Topic.TASKS, [f"task-{n}" for n in range(MAX_NAMED_TASKS + 1)])
    bus.gate.set()
    await hub.aclose()
    assert bus.sent[-1].topics == {Topic.TASKS}
    assert bus.sent[-1].task_ids is None


@scenario
async def test_messages_from_others_reach_subscribers_and_our_own_are_dropped() -> None:
    bus = RecordingBus()
    hub = Wakeups(bus)
    heard = listening(hub)
    await hub.start()
    other = Message("someone-else", {Topic.TASKS, Topic.WORK}, {"t9"})
    bus.receive(other.encode())
    bus.receive(b"not ours at all")
    hub.publish(Topic.CONFIG)
    await until(lambda: len(bus.sent) == 1)
    bus.receive(bus.sent[0].encode())  # our own, echoed back by the bus
    await hub.aclose()
    assert sorted(heard, key=lambda item: item[0].value) == [
        (Topic.CONFIG, None),
        (Topic.TASKS, frozenset({"t9"})),
        (Topic.WORK, None),
    ]


@scenario
async def test_workers_taking_turns_hear_only_the_work_whose_turn_is_theirs() -> None:
    """A message announcing work names a turn; a hub taking turns delivers it only when
    the turn is its own and tells its worker that another one had it. The rest of the
    message, and work announced without a turn (an older sender), reach everyone."""
    bus = RecordingBus()
    hub = Wakeups(bus)
    heard = listening(hub)
    passed: list[None] = []
    hub.take_turns(lambda turn: turn % 2 == 0, lambda: passed.append(None))
    await hub.start()
    bus.receive(Message("other", {Topic.WORK, Topic.TASKS}, {"t1"}, turn=3).encode())
    assert (heard, len(passed)) == ([(Topic.TASKS, frozenset({"t1"}))], 1)
    bus.receive(Message("other", {Topic.WORK}, turn=4).encode())
    bus.receive(Message("old", {Topic.WORK}).encode())
    assert heard[1:] == [(Topic.WORK, None), (Topic.WORK, None)]
    assert len(passed) == 1
    # What this hub announces names a turn; its own worker heard it at once.
    hub.publish(Topic.WORK)
    await until(lambda: len(bus.sent) == 1)
    await hub.aclose()
    assert bus.sent[0].turn is not None
    assert heard[-1] == (Topic.WORK, None)


@scenario
async def test_a_hub_never_started_sends_what_it_has_when_it_closes() -> None:
    """An admin command publishes and ends: it never listens, but its change goes out."""
    bus = RecordingBus()
    hub = Wakeups(bus)
    hub.publish(Topic.CONFIG)
    assert bus.sent == []
    await hub.aclose()
    assert [message.topics for message in bus.sent] == [{Topic.CONFIG}]


# -- the buses -----------------------------------------------------------------------------


@scenario
async def test_sockets_carry_wakeups_between_processes_of_one_file(tmp_path: Path) -> None:
    folder = folder_for(tmp_path / "bananastand.db")  # as the server picks it (a short path)
    first, second = Wakeups(SocketBus(folder)), Wakeups(SocketBus(folder))
    heard_first, heard_second = listening(first), listening(second)
    await first.start()
    await second.start()
    # A socket whose process died (nobody reads it) is dropped by the next sender.
    alive = set(folder.glob("*.sock"))
    dead = SocketBus(folder)
    await dead.start(lambda _payload: None, lambda: None)
    [dead_path] = set(folder.glob("*.sock")) - alive
    dead._socket.close()  # as a killed process's would be; its file stays behind
    first.publish(Topic.TASKS, ["a-task"])
    await until(lambda: (Topic.TASKS, frozenset({"a-task"})) in heard_second)
    second.publish(Topic.WORK)
    await until(lambda: (Topic.WORK, None) in heard_first)
    await first.aclose()
    await second.aclose()
    assert not dead_path.exists()
    assert [topic for topic, _ in heard_first].count(Topic.TASKS) == 1  # its own, not echoed
    assert list(folder.glob("*.sock")) == []
    folder.rmdir()


@scenario
async def test_a_bus_that_cannot_start_leaves_the_process_polling(tmp_path: Path) -> None:
    """A socket path too long for the system (or a folder we may not write) is no reason
    not to start: the hub carries on without a bus, changes still reach this process."""
    hub = Wakeups(SocketBus(tmp_path / ("x" * 120)))
    heard = listening(hub)
    await hub.start()
    assert not hub.shared
    hub.publish(Topic.WORK)
    await hub.aclose()
    assert heard == [(Topic.WORK, None)]


@pytest.mark.postgresql_only(reason="LISTEN/NOTIFY is PostgreSQL's")
@scenario
async def test_notify_carries_wakeups_and_a_lost_listener_comes_back() -> None:
    url = postgres_server().new_database()
    first, second = Wakeups(PostgresBus(url)), Wakeups(PostgresBus(url))
    heard_first, heard_second = listening(first), listening(second)
    await first.start()
    await second.start()
    first.publish(Topic.CONFIG)
    await until(lambda: (Topic.CONFIG, None) in heard_second)
    assert (Topic.CONFIG, None) in heard_first  # its own, locally, once
    assert heard_first.count((Topic.CONFIG, None)) == 1

    # Every connection cut: the listener reconnects, and tells its subscribers to look
    # (what was sent meanwhile is lost).
    heard_second.clear()
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as connection:
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    engine.dispose()
    await until(lambda: set(Topic) <= {topic for topic, ids in heard_second if ids is None})
    heard_second.clear()
    first.publish(Topic.TASKS, ["after"])  # its sending connection was cut too
    await until(lambda: (Topic.TASKS, frozenset({"after"})) in heard_second)
    await first.aclose()
    await second.aclose()


# -- real processes ------------------------------------------------------------------------


def answer_code(child: ServerProcess, key: str, task_id: str) -> int:
    """recordInfo's envelope code (``processes.record`` insists on 200)."""
    reply = httpx.get(
        f"{child.base_url}/api/v1/jobs/recordInfo",
        params={"taskId": task_id},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ).json()
    return int(reply["code"])


def test_two_apis_and_three_workers_wake_each_other(spawn: Spawn, tmp_path: Path) -> None:
    """A task created on either API is run by a worker process at once, a stream on one
    API follows what a worker does, and a key revoked on one API (or by the CLI) is refused
    by the other at once; nobody polls meanwhile."""
    data_dir = tmp_path / "data"
    with_admin = {**NO_POLLS, "BANANASTAND_ADMIN_TOKEN": ADMIN_TOKEN}
    first = spawn("serve", "--no-worker", env=with_admin)
    second = spawn("serve", "--no-worker", env=with_admin)
    key = make_key(data_dir)
    # A stream on the first API, of a task made on the second before any worker runs: all
    # it hears after "waiting" comes from a worker process.
    task_id = create(second, key, "[sandbox:delay=300] followed elsewhere")
    with stream(first.base_url, key, task_id) as response:
        events = items(response)
        assert [record["state"] for record in records([next(events)])] == ["waiting"]
        workers = [spawn("worker", env=NO_POLLS) for _ in range(3)]
        states = ["waiting"] + [record["state"] for record in records(list(events))]
    assert states[-1] == "success", states
    assert in_lifecycle_order(states), states

    # The workers are idle now, their next polls a minute away: only a wake-up runs these.
    for worker in workers:
        wait_for(lambda worker=worker: "worker started" in worker.log(), what="a worker started")
    time.sleep(0.5)  # their first looks for work are behind them
    for api, other in ((first, second), (second, first)) * 2:
        task_id = create(api, key, "a banana")
        ran = wait_record(other, key, task_id, {"success", "fail"}, timeout=WITHIN_S)
        assert ran["state"] == "success"

    # A key revoked through the first API's admin routes, and one revoked by the CLI, both
    # cached by both APIs, are refused by both.
    other_key = make_key(data_dir)
    for api in (first, second):
        for secret in (key, other_key):
            assert answer_code(api, secret, task_id) in (200, 404)
    revoked = httpx.post(
        f"{first.base_url}/admin/keys/{key_id_of(data_dir, key)}/revoke",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    ).json()
    assert revoked["code"] == 200, revoked
    assert cli(data_dir, "keys", "revoke", key_id_of(data_dir, other_key)).returncode == 0
    for api in (first, second):
        for secret in (key, other_key):
            wait_for(
                lambda api=api, secret=secret: answer_code(api, secret, task_id) == 401,
                what="key refused",
                timeout=WITHIN_S,
            )
    assert [worker.terminate() for worker in workers] == [0, 0, 0]


def key_id_of(data_dir: Path, secret: str) -> str:
    with rows_of(data_dir) as connection:
        return str(
            connection.execute(
                select(api_keys.c.id).where(api_keys.c.secret_hash == hash_secret(secret))
            ).scalar_one()
        )


def test_the_workers_of_one_supervisor_are_woken_by_its_api(spawn: Spawn, tmp_path: Path) -> None:
    """``serve --worker-processes 2``: tasks created on the API run in its children at once
    although no child polls within the test."""
    api = spawn("serve", "--worker-processes", "2", env=NO_POLLS)
    wait_for(lambda: api.log().count("worker started") == 2, what="both children started")
    time.sleep(0.5)  # their first looks for work are behind them
    key = make_key(tmp_path / "data")
    made = [create(api, key, "a banana") for _ in range(4)]
    for task_id in made:
        ran = wait_record(api, key, task_id, {"success", "fail"}, timeout=WITHIN_S)
        assert ran["state"] == "success"
    assert api.terminate() == 0

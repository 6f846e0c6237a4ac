"""Integration: ``TaskWatch`` on a real database (this run's): what it rereads, and when."""

from __future__ import annotations

import asyncio
from functools import partial

from sqlalchemy import Connection, update

from bananastand.events import TaskWatch
from bananastand.store import open_store
from bananastand.store.ports import Admission
from bananastand.store.tables import tasks
from store_helpers import new_task

T0 = 1_700_000_000_000


def _touch(connection: Connection, task_id: str, at: int) -> None:
    connection.execute(update(tasks).where(tasks.c.id == task_id).values(updated_at=at))


def test_changes_no_nudge_names_still_arrive_while_nudges_keep_coming(
    empty_database: str,
) -> None:
    """Another process's change reaches its stream at the next poll even while this
    process's worker nudges about other tasks all the time (each nudge rereads only the
    tasks it names, so the poll must not wait for a quiet moment)."""

    async def scenario() -> bool:
        store = await open_store(empty_database, clock=lambda: T0)
        quiet, busy = new_task("acct_watch"), new_task("acct_watch")
        for new in (quiet, busy):
            await store.create_task(new, None, Admission())
        watch = TaskWatch(store, poll_seconds=0.2)
        stop = asyncio.Event()

        async def nudge_busy() -> None:
            at = T0
            while not stop.is_set():
                at += 1
                await store.runner.write(partial(_touch, task_id=busy.id, at=at))
                watch.nudge((busy.id,))
                await asyncio.sleep(0.01)

        try:
            with (
                watch.follow(quiet.id, ("waiting", T0)) as follower,
                watch.follow(busy.id, ("waiting", T0)),
            ):
                nudger = asyncio.create_task(nudge_busy())
                await asyncio.sleep(0.5)  # several polls' worth of nudges, none about quiet
                await store.runner.write(
                    partial(_touch, task_id=quiet.id, at=T0 + 1)
                )  # "elsewhere"
                woke = await follower.changed(10)
                stop.set()
                await nudger
            return woke
        finally:
            await watch.aclose()
            await store.close()

    assert asyncio.run(scenario())


def test_a_nudge_about_unfollowed_tasks_wakes_nobody(empty_database: str) -> None:
    async def scenario() -> bool:
        store = await open_store(empty_database, clock=lambda: T0)
        followed = new_task("acct_watch")
        await store.create_task(followed, None, Admission())
        watch = TaskWatch(store, poll_seconds=60)
        try:
            with watch.follow(followed.id, ("waiting", T0)) as follower:
                watch.nudge(("task_not_followed",))
                unchanged = not await follower.changed(0.3)
                await store.runner.write(partial(_touch, task_id=followed.id, at=T0 + 1))
                watch.nudge((followed.id,))
                return unchanged and await follower.changed(10)
        finally:
            await watch.aclose()
            await store.close()

    assert asyncio.run(scenario())

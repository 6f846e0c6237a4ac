"""Tells open event streams when the tasks they follow change.

One ``TaskWatch`` per process. Each event stream (``Tasks.follow``) registers the task it
follows together with the version of it that it last sent (state and updateTime). The
watch rereads the versions of every followed task from the database - one narrow query,
however many streams are open - and wakes the streams whose task has moved on; they read
the whole record and send it.

It rereads when nudged: a wake-up (``Topic.TASKS``, ``bananastand.wakeups``) that a
worker or a cancel sends right after it commits, from this process or any other, so a
stream hears of a change at once; and otherwise every ``events_poll_ms`` while anything
is followed, for what a lost wake-up would have said. The database is the truth: a nudge
only says when to look, and a missed or spurious one costs at most one poll interval or
one query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator

from bananastand.store.ports import TaskStore

log = logging.getLogger(__name__)

#: What a stream compares: a task's state and its updateTime (epoch ms).
Version = tuple[str, int]


class Follower:
    """One stream's registration: the task it follows and the version it last sent."""

    __slots__ = ("_changed", "closed", "task_id", "version")

    def __init__(self, task_id: str, version: Version) -> None:
        self.task_id = task_id
        self.version = version
        #: The watch closed (the server is stopping): the stream should end now.
        self.closed = False
        self._changed = asyncio.Event()

    async def changed(self, wait_s: float) -> bool:
        """Wait up to ``wait_s`` seconds for news of the task (or for the watch to close);
        False when none came. News is a hint: the stream rereads the task to know."""
        try:
            async with asyncio.timeout(wait_s):
                await self._changed.wait()
        except TimeoutError:
            return False
        self._changed.clear()
        return True

    def _wake(self) -> None:
        self._changed.set()

    def _close(self) -> None:
        self.closed = True
        self._changed.set()


class TaskWatch:
    """The process's registry of followed tasks and the loop that rereads them.

    Lives on the event loop of the server: every method is called from that loop. The
    loop runs only while at least one task is followed.
    """

    def __init__(self, store: TaskStore, *, poll_seconds: float) -> None:
        self._store = store
        self._poll_seconds = poll_seconds
        self._followers: dict[str, set[Follower]] = {}
        self._nudged = asyncio.Event()
        #: Followed tasks a nudge named since the last look; ``None``: look at them all.
        self._named: set[str] | None = set()
        self._loop: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def following(self) -> int:
        """How many streams are registered."""
        return sum(len(followers) for followers in self._followers.values())

    def nudge(self, task_ids: Iterable[str] | None = None) -> None:
        """Tasks changed (a commit in some process): look now rather than at the next poll.

        With ``task_ids``, only when one of them is followed, and the look rereads only
        those: with many streams open, every change of every task would otherwise reread
        them all. Costs nothing when no stream is open, so the worker calls it after every
        change it makes.
        """
        if not self._followers:
            return
        if task_ids is None:
            self._named = None
        else:
            followed = [task_id for task_id in task_ids if task_id in self._followers]
            if not followed:
                return
            if self._named is not None:
                self._named.update(followed)
        self._nudged.set()

    @contextlib.contextmanager
    def follow(self, task_id: str, version: Version) -> Iterator[Follower]:
        """Register a stream for the time of the ``with`` block.

        ``version`` is that of the record the stream has just sent: any later change, even
        one committed before this call, differs from it and wakes the stream.
        """
        follower = Follower(task_id, version)
        if self._closed:
            follower._close()
            yield follower
            return
        self._followers.setdefault(task_id, set()).add(follower)
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._run(), name="task-watch")
        try:
            yield follower
        finally:
            followers = self._followers.get(task_id)
            if followers is not None:
                followers.discard(follower)
                if not followers:
                    del self._followers[task_id]

    def close(self) -> None:
        """End every stream now, and any that starts later at its first event.

        Called as the server begins to shut down: uvicorn waits for open connections
        before it lets the app stop, so streams must end by themselves first.
        """
        self._closed = True
        for followers in self._followers.values():
            for follower in followers:
                follower._close()
        self._nudged.set()

    async def aclose(self) -> None:
        """``close``, then wait for the loop to finish its read (before the database closes)."""
        self.close()
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    async def _run(self) -> None:
        clock = asyncio.get_running_loop().time
        next_poll = clock() + self._poll_seconds
        try:
            while self._followers and not self._closed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(next_poll):
                        await self._nudged.wait()
                if clock() >= next_poll:
                    # The poll, however busy the nudges: changes from other processes.
                    self._named = None
                    next_poll = clock() + self._poll_seconds
                # Taken before reading: a nudge during the read means one more read.
                self._nudged.clear()
                named, self._named = self._named, set()
                if self._closed or not self._followers:
                    break
                try:
                    await self._look(list(self._followers) if named is None else list(named))
                except Exception:
                    log.exception("rereading the followed tasks failed; trying again")
        finally:
            self._loop = None

    async def _look(self, task_ids: list[str]) -> None:
        versions = await self._store.task_versions(task_ids)
        for task_id in task_ids:
            version = versions.get(task_id)  # None: gone; the stream rereads and ends
            for follower in self._followers.get(task_id, ()):
                if follower.version != version:
                    follower._wake()

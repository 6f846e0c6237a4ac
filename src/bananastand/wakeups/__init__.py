"""Wake-ups: telling every process of a deployment that something changed, at once.

The database is the truth and every role still polls it, slowly, as a fallback; a
wake-up only says *look now*. Five things are worth telling (``Topic``): tasks became
claimable (workers look, one of them in turn: ``take_turns``), tasks changed state (event
streams reread them), callbacks became due (senders look), keys, limits or switches
changed (caches drop what they hold), and a worker joined or left (workers reread who is
live). Due callbacks are the one exception: a process that sends callbacks sends those of
the tasks it ended, and tells no one (``TAKEN_HERE``).

``Wakeups`` is the process's hub. A change made here reaches this process's subscribers
at once, by a plain call, as before. It also goes to the other processes through a
``Bus`` (PostgreSQL's LISTEN/NOTIFY, or datagram sockets between processes on one SQLite
file): what is published while one message is being sent is merged into the next one,
so a burst of commits costs one message per round trip (and at most one per
``MIN_GAP_S``; one that only says tasks changed waits ``TASKS_GAP_S`` for more), not one
per change. Every message wakes every process, which costs each some CPU, however little
it does with it. A lost message costs one fallback poll; a bus that
reconnects wakes every local subscriber once, since it may have missed some.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import orjson

from bananastand.ids import random_token

log = logging.getLogger(__name__)


class Topic(StrEnum):
    #: Tasks became claimable (created, rescued, handed back): workers look for work.
    WORK = "work"
    #: These tasks changed state: event streams following them reread them.
    TASKS = "tasks"
    #: A callback became due (its task ended, or it was re-sent): senders look.
    CALLBACKS = "callbacks"
    #: Keys, account limits or switches changed: caches drop what they hold.
    CONFIG = "config"
    #: A worker joined or left the registry: workers reread who is live (whose turn a
    #: task made elsewhere is depends on it).
    WORKERS = "workers"


#: Task ids one message names at most; past this it says "some tasks" and streams reread
#: all they follow (PostgreSQL's NOTIFY payload is under 8000 bytes).
MAX_NAMED_TASKS = 150

#: Least time between two messages of a process: under load (thousands of commits a
#: second) it bounds what wake-ups cost the bus (each NOTIFY is a small transaction) while
#: adding at most this much to a wake-up's latency.
MIN_GAP_S = 0.002

#: How long a message that only says tasks changed (for event streams) waits to gather
#: more: every message wakes every process of the cluster, and a worker's tasks each
#: changed three times within milliseconds (claimed, generating, ended), each a message
#: that woke all the others for nothing but the API's streams. Anything else published
#: meanwhile sends it at once.
TASKS_GAP_S = 0.02

#: Topics whose work one process takes whole: one that has a subscriber of its own takes
#: what it publishes, and the others are not told. A task's callback is sent by the
#: sender of the process that ended it; telling every sender made each run a claim that
#: found nothing (the others' polls still find a callback that this one could not send).
TAKEN_HERE = frozenset({Topic.CALLBACKS})

#: Subscribers get the task ids a message named, or None for "any of them".
Subscriber = Callable[[frozenset[str] | None], None]


@dataclass(slots=True)
class Message:
    """What one process tells the others: topics, and for ``TASKS`` which tasks."""

    sender: str
    topics: set[Topic] = field(default_factory=set)
    #: The changed tasks; None: too many to name, or not known.
    task_ids: set[str] | None = field(default_factory=set)
    #: For ``WORK``: a number drawn by the sender, which says whose turn it is to claim
    #: among the processes that take turns (``Wakeups.take_turns``); None: everyone's.
    turn: int | None = None

    def encode(self) -> bytes:
        ids = None if self.task_ids is None else sorted(self.task_ids)
        data: dict[str, object] = {"from": self.sender, "topics": sorted(self.topics), "tasks": ids}
        if self.turn is not None:
            data["turn"] = self.turn
        return orjson.dumps(data)

    @classmethod
    def decode(cls, payload: bytes | str) -> Message | None:
        """None for a payload that is not ours (another program on the channel)."""
        try:
            data = orjson.loads(payload)
            topics = {Topic(name) for name in data["topics"]}
            ids = data["tasks"]
            turn = data.get("turn")
            return cls(
                str(data["from"]),
                topics,
                None if ids is None else set(map(str, ids)),
                None if turn is None else int(turn),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


class Bus(Protocol):
    """Carries messages between the processes of one deployment (an adapter)."""

    async def start(
        self, receive: Callable[[bytes | str], None], reconnected: Callable[[], None]
    ) -> None:
        """Begin receiving: ``receive`` gets each payload another process sent (maybe ours
        too; the hub drops those), ``reconnected`` is called after a gap in listening."""

    async def send(self, payload: bytes) -> None:
        """Deliver to every listening process (also before ``start``, or without it:
        admin commands only send); raises when it cannot."""

    async def aclose(self) -> None: ...


class Wakeups:
    """The process's hub: ``publish`` here, ``subscribe`` there, across processes."""

    def __init__(self, bus: Bus | None = None, *, tasks_gap_s: float = TASKS_GAP_S) -> None:
        """``tasks_gap_s``: how long a message that only says tasks changed waits for more
        (``TASKS_GAP_S``)."""
        self._bus = bus
        self._tasks_gap_s = tasks_gap_s
        self._me = random_token(8)
        self._subscribers: dict[Topic, list[Subscriber]] = {topic: [] for topic in Topic}
        self._turns: tuple[Callable[[int], bool], Callable[[], None]] | None = None
        self._pending = Message(self._me)
        self._has_pending = asyncio.Event()
        #: Set when what is pending is more than tasks changed: it goes without waiting.
        self._urgent = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def shared(self) -> bool:
        """Whether other processes hear of this one's changes (a bus is running)."""
        return self._bus is not None

    def subscribe(self, topic: Topic, callback: Subscriber) -> None:
        self._subscribers[topic].append(callback)

    def take_turns(self, mine: Callable[[int], bool], passed: Callable[[], None]) -> None:
        """Take turns with the other processes at the ``WORK`` they announce: one that
        names a turn reaches this process's subscribers only if ``mine(turn)``, else
        ``passed()`` is called (another process claims it; this one may look later, in
        case that one could not). Without it, every process claims every task created
        anywhere and all but one find nothing."""
        self._turns = (mine, passed)

    def publish(self, topic: Topic, task_ids: Iterable[str] | None = None) -> None:
        """Something of ``topic`` was committed (``task_ids``: which tasks, for ``TASKS``).

        Costs nothing but a set update when no bus runs; never blocks and never raises:
        the fallback poll covers a message that could not be sent. A topic of
        ``TAKEN_HERE`` goes to the others only when this process has no subscriber of it."""
        ids = None if task_ids is None else frozenset(task_ids)
        self._deliver(topic, ids)
        if self._bus is None or self._closing:
            return
        if topic in TAKEN_HERE and self._subscribers[topic]:
            return
        pending = self._pending
        pending.topics.add(topic)
        if topic is not Topic.TASKS:
            self._urgent.set()
        elif pending.task_ids is not None:
            if ids is None:
                pending.task_ids = None
            else:
                pending.task_ids.update(ids)
                if len(pending.task_ids) > MAX_NAMED_TASKS:
                    pending.task_ids = None
        self._has_pending.set()

    def wake_here(self, topic: Topic) -> None:
        """Wake this process's subscribers of ``topic`` only (what this process found
        for itself, e.g. a poll that found due callbacks, is nothing to tell the others)."""
        self._deliver(topic, None)

    async def start(self) -> None:
        """Start listening and sending (a no-op without a bus)."""
        if self._bus is None:
            return
        try:
            await self._bus.start(self._received, self._wake_all)
        except OSError as exc:  # e.g. a temporary folder we may not write: poll instead
            log.warning("wake-ups between processes are off (%s); processes poll", exc)
            await self._bus.aclose()
            self._bus = None
            return
        self._sender = asyncio.get_running_loop().create_task(self._send_loop(), name="wakeups")

    async def aclose(self) -> None:
        """Send what is pending (a last change should still reach the others), then stop.
        A hub never started (an admin command) sends it here."""
        self._closing = True
        if self._sender is not None:
            self._urgent.set()
            self._has_pending.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        elif self._pending.topics:
            await self._send(self._take_pending())
        if self._bus is not None:
            await self._bus.aclose()

    def _take_pending(self) -> Message:
        message, self._pending = self._pending, Message(self._me)
        if Topic.WORK in message.topics:
            message.turn = random.getrandbits(31)
        return message

    async def _send(self, message: Message) -> None:
        assert self._bus is not None
        try:
            await self._bus.send(message.encode())
        except Exception as exc:  # the fallback poll covers it
            log.warning("could not send a wake-up: %s", exc)

    def _deliver(self, topic: Topic, ids: frozenset[str] | None) -> None:
        for callback in self._subscribers[topic]:
            try:
                callback(ids)
            except Exception:
                log.exception("a wake-up subscriber failed", extra={"topic": topic.value})

    def _received(self, payload: bytes | str) -> None:
        message = Message.decode(payload)
        if message is None or message.sender == self._me:
            return
        named = None if message.task_ids is None else frozenset(message.task_ids)
        for topic in message.topics:
            if topic is Topic.WORK and self._turns is not None and message.turn is not None:
                mine, passed = self._turns
                if not mine(message.turn):
                    passed()
                    continue
            self._deliver(topic, named if topic is Topic.TASKS else None)

    def _wake_all(self) -> None:
        for topic in Topic:
            self._deliver(topic, None)

    async def _send_loop(self) -> None:
        while True:
            await self._has_pending.wait()
            if not self._urgent.is_set():  # tasks changed, and nothing else: gather more
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self._tasks_gap_s)
            self._urgent.clear()
            self._has_pending.clear()
            message = self._take_pending()
            if message.topics:
                await self._send(message)
            if self._closing and not self._has_pending.is_set():
                return
            if not self._closing:
                await asyncio.sleep(MIN_GAP_S)

"""When a worker claims: only while tasks may be waiting that it has not tried to take.

A claim is a write transaction, and one that finds nothing is pure cost: under load,
with several worker processes, most claims found nothing (each task created woke every
worker, each freed slot claimed again). So a worker claims when

- a wake-up says tasks became claimable: made in this process, or made in another one
  and the turn is this worker's (``Wakeups.take_turns``: one live worker takes each);
- its last claim took all it asked for (more may be waiting), and then at each freed slot;
- a look (one read) saw tasks waiting: at each poll, and a moment after another worker's
  turn, in case that one could not claim (it was full, or it is gone).

A claim that took fewer than it asked for saw the queue empty: every task made
claimable since comes with a wake-up, so a freed slot does not claim then.
"""

from __future__ import annotations

import asyncio


class Claiming:
    """A worker's reasons to claim or look, and the event its loop waits on.

    ``look_after_turn_s``: how long after another worker's turn this one looks whether
    tasks still wait (``BANANASTAND_WORKER_TURN_LOOK_SECONDS``); one look however many
    turns pass meanwhile."""

    def __init__(self, look_after_turn_s: float) -> None:
        self._look_after_turn_s = look_after_turn_s
        #: Whether tasks may be waiting that this worker has not tried to claim (set at
        #: start: it has not looked yet).
        self.maybe_waiting = True
        #: Whether to look (one read) before claiming.
        self.look_due = False
        self._timer: asyncio.TimerHandle | None = None
        self._event = asyncio.Event()

    def announced(self) -> None:
        """Tasks became claimable: claim now, or as soon as a slot frees up."""
        self.maybe_waiting = True
        self._event.set()

    def turn_passed(self) -> None:
        """Another worker's turn at tasks made elsewhere: look a moment later."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._look_after_turn_s, self._look)

    def _look(self) -> None:
        self._timer = None
        self.look_due = True
        self._event.set()

    def claiming(self) -> None:
        """A claim begins: a wake-up that comes while it runs sets this again."""
        self.maybe_waiting = False

    def claimed(self, taken: int, asked: int) -> None:
        if taken >= asked:
            self.maybe_waiting = True  # it took all it could: more may be waiting

    def looked(self, waiting: bool) -> None:
        self.look_due = False
        self.maybe_waiting = self.maybe_waiting or waiting

    def slot_freed(self) -> None:
        if self.maybe_waiting or self.look_due:
            self._event.set()

    def interrupt(self) -> None:
        """Wake the loop whatever there is to do (to stop)."""
        self._event.set()

    async def wait(self, poll_s: float) -> None:
        """Until something to do, or the poll's time (a look is due then)."""
        try:
            await asyncio.wait_for(self._event.wait(), poll_s)
        except TimeoutError:
            self.look_due = True
        self._event.clear()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

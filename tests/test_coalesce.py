"""Unit: ``store.coalesce.Coalescer``: callers waiting at once share one fetch.

The fetches here are plain functions that record what they were asked and, where a test
says so, wait for the test to let them finish: which callers meet in a batch is decided by
the event loop's order, never by time, so every assertion holds on a busy machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from bananastand.store.coalesce import Coalescer
from store_helpers import scenario


class Fetches:
    """A fetch that answers ``key * 10`` (``None`` for negative keys), records each batch,
    and, while ``held``, waits for ``release()`` before answering; its first batch raises
    ``error`` instead, if one is given."""

    def __init__(self, *, held: bool = False, error: BaseException | None = None) -> None:
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_running = 0
        self.started = asyncio.Event()
        self._gate = asyncio.Event()
        if not held:
            self._gate.set()
        self.error = error

    def release(self) -> None:
        self._gate.set()

    async def __call__(self, keys: Sequence[int]) -> list[int | None]:
        self.batches.append(list(keys))
        error = self.error if len(self.batches) == 1 else None
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.started.set()
        try:
            await self._gate.wait()
        finally:
            self.running -= 1
        if error is not None:
            raise error
        return [key * 10 if key >= 0 else None for key in keys]

    async def until_started(self, count: int) -> None:
        while len(self.batches) < count:
            self.started.clear()
            await self.started.wait()


def coalescer(fetch: Fetches, **options: int) -> Coalescer[int, int | None]:
    return Coalescer(fetch, loop=asyncio.get_running_loop(), **options)


@scenario
async def test_callers_waiting_at_once_share_one_fetch_and_each_gets_its_own_value() -> None:
    fetch = Fetches()
    batched = coalescer(fetch)
    keys = [3, 1, -1, 3, 2, 1, 3, -5]
    answers = await asyncio.gather(*(batched.get(key) for key in keys))
    assert answers == [30, 10, None, 30, 20, 10, 30, None]
    # One fetch, each key once, in the order they were first asked for.
    assert fetch.batches == [[3, 1, -1, 2, -5]]


@scenario
async def test_a_caller_alone_is_fetched_at_once_and_alone() -> None:
    fetch = Fetches()
    batched = coalescer(fetch)
    assert await batched.get(4) == 40
    assert await batched.get(5) == 50
    assert fetch.batches == [[4], [5]]


@scenario
async def test_at_most_max_in_flight_and_the_next_batch_gathers_who_came_meanwhile() -> None:
    fetch = Fetches(held=True)
    batched = coalescer(fetch, max_in_flight=2)
    first = asyncio.ensure_future(batched.get(1))
    await fetch.until_started(1)
    second = asyncio.ensure_future(batched.get(2))
    await fetch.until_started(2)
    later = [asyncio.ensure_future(batched.get(key)) for key in (3, 4, 3, 5)]
    for _ in range(20):  # turns of the loop: none starts a third fetch
        await asyncio.sleep(0)
    assert fetch.batches == [[1], [2]]
    assert not any(task.done() for task in [first, second, *later])
    fetch.release()
    assert await asyncio.gather(first, second, *later) == [10, 20, 30, 40, 30, 50]
    assert fetch.batches == [[1], [2], [3, 4, 5]]
    assert fetch.most_running == 2


@scenario
async def test_a_batch_takes_at_most_max_batch_keys() -> None:
    fetch = Fetches()
    batched = coalescer(fetch, max_batch=4)
    answers = await asyncio.gather(*(batched.get(key) for key in range(10)))
    assert answers == [key * 10 for key in range(10)]
    assert fetch.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@scenario
async def test_an_error_in_a_fetch_reaches_every_caller_of_its_batch_and_only_them() -> None:
    fetch = Fetches(held=True, error=LookupError("the database said no"))
    batched = coalescer(fetch, max_in_flight=1)
    failing = [asyncio.ensure_future(batched.get(key)) for key in (1, 2, 1)]
    await fetch.until_started(1)
    after = asyncio.ensure_future(batched.get(7))  # waits for the next batch
    await asyncio.sleep(0)
    fetch.release()
    answers = await asyncio.gather(*failing, return_exceptions=True)
    assert [str(answer) for answer in answers] == ["the database said no"] * 3
    assert all(isinstance(answer, LookupError) for answer in answers)
    assert await after == 70
    assert fetch.batches == [[1, 2], [7]]


@scenario
async def test_a_fetch_giving_the_wrong_number_of_values_fails_its_callers() -> None:
    async def short(keys: Sequence[int]) -> list[int]:
        return [1]

    batched: Coalescer[int, int] = Coalescer(short, loop=asyncio.get_running_loop())
    answers = await asyncio.gather(batched.get(1), batched.get(2), return_exceptions=True)
    assert all(isinstance(answer, RuntimeError) for answer in answers), answers
    assert "2 keys gave 1 values" in str(answers[0])


@scenario
async def test_a_caller_that_gives_up_leaves_the_others_their_values() -> None:
    fetch = Fetches(held=True)
    batched = coalescer(fetch)
    leaving = asyncio.ensure_future(batched.get(1))
    staying = [asyncio.ensure_future(batched.get(key)) for key in (1, 2)]
    await fetch.until_started(1)
    leaving.cancel()
    fetch.release()
    assert await asyncio.gather(*staying) == [10, 20]
    with pytest.raises(asyncio.CancelledError):
        await leaving
    # Nothing is left behind: the next caller starts a batch of its own.
    assert await batched.get(3) == 30
    assert fetch.batches == [[1, 2], [3]]


@scenario
async def test_a_cancelled_fetch_cancels_its_callers_and_the_coalescer_carries_on() -> None:
    fetch = Fetches(held=True)
    batched = coalescer(fetch, max_in_flight=1)
    waiting = [asyncio.ensure_future(batched.get(key)) for key in (1, 2)]
    await fetch.until_started(1)
    [running] = [task for task in asyncio.all_tasks() if "_run" in repr(task.get_coro())]
    running.cancel()
    answers = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(answer, asyncio.CancelledError) for answer in answers), answers
    fetch.release()
    assert await batched.get(5) == 50


@scenario
async def test_a_batch_cancelled_before_it_started_cancels_its_callers_too() -> None:
    """As when its event loop shuts down: nobody is left waiting for it."""
    fetch = Fetches()
    batched = coalescer(fetch, max_in_flight=1)
    waiting = asyncio.ensure_future(batched.get(1))
    await asyncio.sleep(0)  # the caller asked; the batch is scheduled, not started
    [scheduled] = [task for task in asyncio.all_tasks() if "_run" in repr(task.get_coro())]
    scheduled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert fetch.batches == []
    assert await batched.get(2) == 20


def test_it_needs_room_for_one_batch() -> None:
    async def never(keys: Sequence[int]) -> list[int]:
        raise AssertionError("not called")

    loop = asyncio.new_event_loop()
    try:
        for options in ({"max_in_flight": 0}, {"max_batch": 0}):
            with pytest.raises(ValueError, match="at least 1"):
                Coalescer(never, loop=loop, **options)
    finally:
        loop.close()

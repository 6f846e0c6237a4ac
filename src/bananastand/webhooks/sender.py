"""The sender: claims due callbacks, posts them signed, records every attempt."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial

from bananastand.addresses import HostList
from bananastand.fetch import FetchError, SafeFetcher
from bananastand.ids import random_token
from bananastand.logs import bind_task
from bananastand.metrics import Metrics
from bananastand.records import CallbackAttempt, DeliveryState
from bananastand.results import RecordMaker
from bananastand.settings import Settings
from bananastand.store.ports import ClaimedCallback, Outbox
from bananastand.webhooks.schedule import Verdict, denied, judge, next_delay_s
from bananastand.webhooks.signing import callback_body, new_secret, signed_headers

log = logging.getLogger(__name__)

#: The sender's own poll, in poll intervals: the worker of its process looks for due
#: callbacks at every poll of its own and wakes it.
_OWN_POLL_FACTOR = 6

#: An attempt's outcome, in the metrics' words, by the state it leaves the callback in.
_OUTCOMES = {
    DeliveryState.DELIVERED: "delivered",
    DeliveryState.PENDING: "retrying",
    DeliveryState.FAILED: "failed",
    DeliveryState.REFUSED: "refused",
}


class WebhookSender:
    def __init__(
        self,
        store: Outbox,
        settings: Settings,
        fetcher: SafeFetcher,
        records: RecordMaker,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._settings = settings
        self._fetcher = fetcher
        self._records = records
        self._deny = HostList.parse(settings.callback_deny_hosts)
        # A delivery's whole POST is capped by the timeout; the lease outlasts it and the
        # write of its attempt with room to spare.
        self._lease_ms = int((settings.webhook_timeout_seconds * 2 + 1) * 1000)
        self._window_ms = int(settings.webhook_secret_rotation_seconds * 1000)
        self._running: dict[str, tuple[asyncio.Task[None], ClaimedCallback]] = {}
        self._per_host: dict[str, int] = {}
        self._holding_host: set[str] = set()  # claims whose POST has not ended yet
        #: Whether due callbacks may be waiting that this sender has not tried to claim:
        #: set by a wake-up (its own retry timers' too), by a claim that took all it
        #: could, and by a receiver at its limit freeing a slot (a claim leaves its
        #: callbacks out); cleared as a claim begins. A freed slot claims only while it
        #: is set (as the worker's free slots do).
        self._maybe_due = True
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._timers: set[asyncio.TimerHandle] = set()

    def wake(self) -> None:
        """A task with a callback ended, or a callback was re-sent: look now (or, with no
        free slot, as soon as one frees up)."""
        self._maybe_due = True
        self._wakeup.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()

    async def aclose(self) -> None:
        await self._fetcher.aclose()

    async def run(self) -> None:
        """Deliver until ``stop()``; deliveries still in flight then are handed back."""
        log.info("webhook sender started")
        try:
            while not self._stopping.is_set():
                if self._maybe_due and self._free_slots() > 0:
                    try:
                        await self._claim()
                        continue
                    except Exception:
                        self._maybe_due = True  # at its next wake-up or poll
                        log.exception("claiming callbacks failed; retrying")
                # Woken by wake-ups (a task with a callback ended, a resend), by its own
                # retry timers, and by the polls of the worker beside it, which look for
                # due callbacks too; its own poll is only a last resort.
                try:
                    await asyncio.wait_for(
                        self._wakeup.wait(),
                        self._settings.poll_interval_seconds * _OWN_POLL_FACTOR,
                    )
                except TimeoutError:
                    self._maybe_due = True
                self._wakeup.clear()
        finally:
            await self._halt()
            log.info("webhook sender stopped")

    def _free_slots(self) -> int:
        return self._settings.webhook_concurrency - len(self._running)

    async def _claim(self) -> None:
        free = self._free_slots()
        # Cleared first: a wake-up that comes while the claim runs sets it again.
        self._maybe_due = False
        claims = await self._store.claim_due(
            lease_token=random_token(24),
            limit=free,
            per_host=self._settings.webhook_per_host_concurrency,
            in_flight=dict(self._per_host),
            lease_ms=self._lease_ms,
            new_secret=new_secret,
        )
        for claim in claims:
            self._per_host[claim.host_key] = self._per_host.get(claim.host_key, 0) + 1
            self._holding_host.add(claim.id)
            runner = asyncio.create_task(self._deliver(claim), name=f"callback-{claim.id}")
            self._running[claim.id] = (runner, claim)
            runner.add_done_callback(partial(self._finished, claim))
        if len(claims) >= free:
            self._maybe_due = True  # all it could take: the next freed slot looks again

    def _finished(self, claim: ClaimedCallback, _runner: asyncio.Task[None]) -> None:
        self._running.pop(claim.id, None)
        self._host_done(claim)
        if self._maybe_due:
            self._wakeup.set()  # a slot is free, and callbacks may be due

    def _host_done(self, claim: ClaimedCallback) -> None:
        """Free the receiver's slot as soon as it has answered: recording the attempt is
        our work, not the receiver's, and must not throttle the next delivery to it."""
        if claim.id not in self._holding_host:
            return
        self._holding_host.discard(claim.id)
        held = self._per_host.get(claim.host_key, 1)
        if held >= self._settings.webhook_per_host_concurrency:
            self._maybe_due = True  # its receiver was at its limit: some may have waited
        left = held - 1
        if left > 0:
            self._per_host[claim.host_key] = left
        else:
            self._per_host.pop(claim.host_key, None)
        if self._maybe_due:
            self._wakeup.set()

    async def _halt(self) -> None:
        for timer in self._timers:
            timer.cancel()
        held = [(claim.id, claim.lease_token) for _, claim in self._running.values()]
        runners = [runner for runner, _ in self._running.values()]
        for runner in runners:
            runner.cancel()
        for runner in runners:
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if held:
            released = await self._store.release_callbacks(held)
            log.info("handed back %d interrupted callback deliveries", released)

    async def _deliver(self, claim: ClaimedCallback) -> None:
        with bind_task(claim.task.id):
            try:
                await self._attempt(claim)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("callback delivery crashed", extra={"webhook_id": claim.id})

    async def _attempt(self, claim: ClaimedCallback) -> None:
        attempted_at = self._store.now_ms()
        started = time.monotonic()
        refusal = denied(self._deny, claim.url)
        if refusal is None:
            status, verdict = await self._post(claim, attempted_at)
        else:  # no connection, not even a name lookup
            status, verdict = None, Verdict(success=False, error=refusal, final=True)
        duration_s = time.monotonic() - started
        duration_ms = int(duration_s * 1000)
        self._host_done(claim)
        delay = None
        if not verdict.success and not verdict.final:
            delay = next_delay_s(
                self._settings.webhook_retry_schedule_seconds,
                claim.tries + 1,
                verdict.retry_after_s,
            )
        if verdict.success:
            state = DeliveryState.DELIVERED
        elif refusal is not None:
            state = DeliveryState.REFUSED
        elif delay is None:
            state = DeliveryState.FAILED
        else:
            state = DeliveryState.PENDING
        owned = await self._store.record_attempt(
            callback_id=claim.id,
            lease_token=claim.lease_token,
            attempt=CallbackAttempt(
                attempted_at=attempted_at,
                duration_ms=duration_ms,
                http_status=status,
                error=verdict.error,
                success=verdict.success,
            ),
            state=state,
            retry_in_ms=None if delay is None else int(delay * 1000),
        )
        self._metrics.callback_deliveries.labels(_OUTCOMES[state]).inc()
        self._metrics.callback_duration.observe(duration_s)
        fields = {
            "webhook_id": claim.id,
            "attempt": claim.tries + 1,
            "http_status": status,
            "duration_ms": duration_ms,
        }
        if verdict.success:
            log.info("callback delivered", extra=fields)
        elif state in (DeliveryState.FAILED, DeliveryState.REFUSED):
            log.warning("callback %s: %s", state, verdict.error, extra=fields)
        else:
            log.info("callback attempt failed: %s; retrying", verdict.error, extra=fields)
        if owned and delay is not None:
            self._wake_in(delay)

    async def _post(self, claim: ClaimedCallback, attempted_at: int) -> tuple[int | None, Verdict]:
        """Sign and send the callback: the answer's status (None: no answer) and verdict."""
        timestamp = int(time.time())
        body = callback_body(claim.task, self._records)
        headers = signed_headers(
            msg_id=claim.id,
            task_id=claim.task.id,
            body=body,
            signing=claim.secret.signing_secrets(attempted_at, self._window_ms),
            timestamp=timestamp,
        )
        try:
            response = await self._fetcher.post(
                claim.url,
                content=body,
                headers=headers,
                timeout_s=self._settings.webhook_timeout_seconds,
            )
        except FetchError as exc:
            return None, Verdict(success=False, error=exc.message)
        return response.status_code, judge(response.status_code, response.headers)

    def _wake_in(self, delay_s: float) -> None:
        """Look again when this retry is due, rather than at the next poll."""
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(timer)
            self.wake()

        timer = loop.call_later(delay_s, fire)
        self._timers.add(timer)

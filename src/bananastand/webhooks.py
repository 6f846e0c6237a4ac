"""Callbacks: what is sent, how it is signed, when it is retried, and the sender.

The outbox row is written in the transaction that ends a task (``store/tasks.py``); the
`WebhookSender` runs wherever a worker runs and empties it:

- it claims due callbacks with a lease, so a sender killed mid-delivery leaves a row that
  the next claim sends again, with the same ``webhook-id`` (at-least-once);
- it sends through its own `SafeFetcher` (no private targets unless allow-listed, each
  name resolved and checked at every delivery, redirects never followed), so a slow
  receiver never holds a connection an ``image_input`` fetch needs;
- at most ``webhook_concurrency`` deliveries are in flight, at most
  ``webhook_per_host_concurrency`` per receiving host:port, and claiming skips saturated
  hosts: a receiver that hangs delays only its own callbacks;
- every attempt is stored; failures are retried on ``webhook_retry_schedule_seconds``
  with jitter, later if ``Retry-After`` asks; ``410 Gone`` stops. A delivery never
  touches the task;
- a callback to a host in ``callback_deny_hosts`` is never sent (no connection, no name
  lookup): it ends ``refused``, with one attempt saying why. That is judged at each
  delivery, so a change of the setting applies to every callback not yet sent.

`Webhooks` is the account-facing side: secrets, the attempt log, resending.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import logging
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

import orjson

from bananastand.addresses import HostList
from bananastand.client.webhooks import sign_hosted, sign_standard
from bananastand.codes import Code
from bananastand.contract import TaskState
from bananastand.errors import NotFoundError, ValidationError
from bananastand.fetch import FetchError, SafeFetcher
from bananastand.ids import random_token
from bananastand.logs import bind_task
from bananastand.metrics import Metrics
from bananastand.records import Callback, CallbackAttempt, Task, WebhookSecret
from bananastand.results import TaskRecords
from bananastand.settings import Settings
from bananastand.store import ports
from bananastand.store.ports import ClaimedCallback, Outbox

log = logging.getLogger(__name__)

#: The sender's own poll, in poll intervals: the worker of its process looks for due
#: callbacks at every poll of its own and wakes it.
_OWN_POLL_FACTOR = 6

#: Retries are spread by this fraction either way, so receivers back up together
#: do not get their retries all at once.
JITTER = 0.1
#: The longest a ``Retry-After`` may push an attempt back.
MAX_RETRY_AFTER_S = 24 * 3600.0


def new_secret() -> str:
    """``whsec_`` + base64 of 32 random bytes: the Standard Webhooks form."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def callback_body(task: Task, records: TaskRecords) -> bytes:
    """The recordInfo envelope of the ended task: code 200 on success, 501 on failure.

    Made for each attempt: a retry after the server moved carries links that work now."""
    if task.state is TaskState.SUCCESS:
        code, msg = Code.OK, "success"
    else:
        code, msg = Code.GENERATION_FAILED, task.fail_msg or "generation failed"
    return orjson.dumps({"code": code, "msg": msg, "message": msg, "data": records.record(task)})


def signed_headers(
    *, msg_id: str, task_id: str, body: bytes, signing: tuple[str, ...], timestamp: int
) -> dict[str, str]:
    """Both schemes' headers. ``signing`` is the current secret, then the previous one
    during a rotation window: Standard Webhooks carries one signature per secret, the
    hosted API's header only the current one."""
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            sign_standard(secret, msg_id, timestamp, body) for secret in signing
        ),
        "X-Webhook-Timestamp": str(timestamp),
        "X-Webhook-Signature": sign_hosted(signing[0], task_id, timestamp),
    }


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait, from ``Retry-After`` as seconds or an HTTP date; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when.timestamp() - time.time()), MAX_RETRY_AFTER_S)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one attempt means for the callback."""

    success: bool
    error: str
    #: Whether the receiver said never to try again (410 Gone).
    final: bool = False
    retry_after_s: float | None = None


def judge(status: int, headers: Mapping[str, str]) -> Verdict:
    """Only a 2xx delivers; a redirect is a failure (never followed); 410 stops."""
    if 200 <= status < 300:
        return Verdict(success=True, error="")
    if 300 <= status < 400:
        location = headers.get("location")
        where = f" to {location}" if location else ""
        return Verdict(success=False, error=f"redirect not followed (HTTP {status}{where})")
    if status == 410:
        return Verdict(
            success=False, error="HTTP 410 Gone: the receiver asked us to stop", final=True
        )
    return Verdict(
        success=False,
        error=f"HTTP {status}",
        retry_after_s=parse_retry_after(headers.get("retry-after")),
    )


def denied(deny: HostList, url: str) -> str | None:
    """Why a callback to ``url`` is never sent, or None. The operator's deny list exists
    because some clients put a third party's URL (their reseller's proxy) into every task:
    this server must not post its users' signed results there."""
    host = urlsplit(url).hostname or ""
    if not deny.matches(host):
        return None
    return f"not sent: the server setting BANANASTAND_CALLBACK_DENY_HOSTS refuses {host}"


def next_delay_s(
    schedule: list[float], attempts_made: int, retry_after_s: float | None
) -> float | None:
    """Seconds until the next attempt after ``attempts_made`` failed ones; None: give up.

    ``schedule[n]`` is the delay before attempt ``n + 1`` (``schedule[0]``, "now", is the
    first attempt's, made as the task ends).
    """
    if attempts_made >= len(schedule):
        return None
    delay = schedule[attempts_made] * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay


#: An attempt's outcome, in the metrics' words, by the state it leaves the callback in.
_OUTCOMES = {
    ports.DELIVERED: "delivered",
    ports.PENDING: "retrying",
    ports.FAILED: "failed",
    ports.REFUSED: "refused",
}


class WebhookSender:
    def __init__(
        self,
        store: Outbox,
        settings: Settings,
        fetcher: SafeFetcher,
        records: TaskRecords,
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
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._timers: set[asyncio.TimerHandle] = set()

    def wake(self) -> None:
        """A task with a callback ended, or a callback was re-sent: look now."""
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
                try:
                    if await self._claim():
                        continue  # there may be more due
                except Exception:
                    log.exception("claiming callbacks failed; retrying")
                # Woken by wake-ups (a task with a callback ended anywhere, a resend), by
                # its own retry timers, and by the polls of the worker beside it, which
                # look for due callbacks too; its own poll is only a last resort.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wakeup.wait(),
                        self._settings.poll_interval_seconds * _OWN_POLL_FACTOR,
                    )
                self._wakeup.clear()
        finally:
            await self._halt()
            log.info("webhook sender stopped")

    async def _claim(self) -> int:
        free = self._settings.webhook_concurrency - len(self._running)
        if free <= 0:
            return 0
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
        return len(claims)

    def _finished(self, claim: ClaimedCallback, _runner: asyncio.Task[None]) -> None:
        self._running.pop(claim.id, None)
        self._host_done(claim)
        self._wakeup.set()  # a slot is free

    def _host_done(self, claim: ClaimedCallback) -> None:
        """Free the receiver's slot as soon as it has answered: recording the attempt is
        our work, not the receiver's, and must not throttle the next delivery to it."""
        if claim.id not in self._holding_host:
            return
        self._holding_host.discard(claim.id)
        left = self._per_host.get(claim.host_key, 1) - 1
        if left > 0:
            self._per_host[claim.host_key] = left
        else:
            self._per_host.pop(claim.host_key, None)
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
            state = ports.DELIVERED
        elif refusal is not None:
            state = ports.REFUSED
        elif delay is None:
            state = ports.FAILED
        else:
            state = ports.PENDING
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
        elif state in (ports.FAILED, ports.REFUSED):
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


class Webhooks:
    """The account-facing side: webhook secrets, the attempt log, resending."""

    def __init__(
        self, store: Outbox, settings: Settings, *, on_resend: Callable[[], None] = lambda: None
    ) -> None:
        self._store = store
        self._settings = settings
        self._deny = HostList.parse(settings.callback_deny_hosts)
        # Lets a sender in this process send at once rather than at its next poll.
        self._on_resend = on_resend

    @property
    def rotation_window_ms(self) -> int:
        return int(self._settings.webhook_secret_rotation_seconds * 1000)

    async def secret(self, account_id: str, *, rotate: bool = False) -> WebhookSecret:
        """The account's secret, made on first use; ``rotate`` replaces it (the old one
        keeps signing, beside the new one, for the rotation window)."""
        found = await self._store.account_secret(account_id, new_secret, rotate=rotate)
        if found is None:
            raise NotFoundError(f"account {account_id} does not exist")
        return found

    async def callback(self, account_id: str, task_id: str) -> Callback:
        """The task's callback and its attempts; a task that has not ended has none yet."""

        task, found = await self._store.callback_of_task(task_id, account_id)
        if task is None:
            raise NotFoundError(f"task {task_id} not found")
        if task.callback_url is None:
            raise ValidationError("taskId: the task has no callBackUrl")
        if found is None:
            return Callback(
                id=None,
                task_id=task.id,
                url=task.callback_url,
                state="waiting",  # sent when the task ends
                next_attempt_at=None,
                delivered_at=None,
                attempts=(),
            )
        return found

    async def resend(self, account_id: str, task_id: str) -> Callback:
        """Send the callback again now (same webhook-id, a fresh retry schedule).

        A refused callback whose host is still denied stays as it is; once the setting
        no longer denies it, a resend sends it.
        """
        current = await self.callback(account_id, task_id)
        if current.id is None:
            raise ValidationError(
                "taskId: the task has not ended; its callback is sent when it does"
            )
        if current.state == ports.REFUSED and denied(self._deny, current.url):
            return current
        await self._store.resend(task_id, account_id)
        self._on_resend()
        return await self.callback(account_id, task_id)

"""The task lifecycle as clients see it: accept, look up, list, cancel.

Running a task is the worker's part (``worker.py``); both meet only in the task table.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError as PydanticValidationError

from bananastand.accounts import Accounts
from bananastand.addresses import ALLOW_HINT, AllowList, is_public_address, literal_host
from bananastand.batch_lane import batch_provider
from bananastand.billing import Billing, month_start_ms
from bananastand.contract import (
    CANCELED_MSG,
    FAIL_INPUT,
    CreateTaskRequest,
    Lane,
    TaskState,
    describe_validation_error,
)
from bananastand.cursors import decode_cursor, encode_cursor
from bananastand.errors import (
    AuthenticationError,
    InsufficientCreditsError,
    NotFoundError,
    RateLimitedError,
    ValidationError,
)
from bananastand.events import TaskWatch, Version
from bananastand.ids import new_task_id
from bananastand.metrics import Metrics
from bananastand.models import check_model_rules, in_clients_words, spec_input
from bananastand.ops import Switches
from bananastand.providers.registry import ProviderChoice
from bananastand.records import ApiKey, Task
from bananastand.settings import Settings
from bananastand.storage.links import LinkSigner
from bananastand.store.ports import (
    Admission,
    Created,
    CreateRefusal,
    Failure,
    IdempotencyClaim,
    KeyReused,
    MonthlyCapReached,
    NewTask,
    NotEnoughCredits,
    TaskStore,
    TooManyWaiting,
)
from bananastand.wakeups import Topic, Wakeups

MAX_IDEMPOTENCY_KEY = 255
MAX_PAGE = 100
CANCELED = Failure(code=FAIL_INPUT, message=CANCELED_MSG)
#: Why a task can no longer be canceled, in words (a state is no adjective: "is fail").
_TOO_LATE = {TaskState.SUCCESS: "has already succeeded", TaskState.FAIL: "has already failed"}


@dataclass(frozen=True, slots=True)
class Page:
    tasks: list[Task]
    next_cursor: str | None


class Tasks:
    def __init__(
        self,
        store: TaskStore,
        settings: Settings,
        provider_choice: ProviderChoice,
        *,
        accounts: Accounts,
        billing: Billing,
        switches: Switches,
        watch: TaskWatch,
        links: LinkSigner,
        wakeups: Wakeups,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._settings = settings
        self._provider_choice = provider_choice
        self._allow = AllowList.parse(settings.allow_private_networks)
        self._links = links
        self._accounts = accounts
        self._billing = billing
        self._switches = switches
        # Lets workers anywhere start at once instead of at their next poll, and streams
        # anywhere hear of a cancel.
        self._wakeups = wakeups
        self._metrics = metrics
        #: Where event streams learn that their task changed.
        self.watch = watch

    def validate(self, body: Any) -> CreateTaskRequest:
        if not isinstance(body, dict):
            raise ValidationError("body: must be a JSON object")
        model = body.get("model")
        spec = self._settings.models.get(model) if isinstance(model, str) else None
        raw_input = body.get("input")
        try:
            if spec is not None and isinstance(model, str) and isinstance(raw_input, dict):
                shaped = spec_input(spec, raw_input)
                check_model_rules(model, spec, shaped)
                body = {**body, "input": shaped}
            request = CreateTaskRequest.model_validate(body)
            if spec is None:
                known = ", ".join(sorted(self._settings.models))
                raise ValidationError(f"model: unknown model {request.model!r}; expected {known}")
        except PydanticValidationError as exc:
            message = describe_validation_error(exc)
            raise ValidationError(
                in_clients_words(spec, raw_input, message) if spec else message
            ) from None
        except ValidationError as exc:
            if spec is None:
                raise
            raise ValidationError(in_clients_words(spec, raw_input, exc.msg)) from None
        for index, url in enumerate(request.input.image_input):
            self._check_literal_address(f"input.image_input[{index}]", url)
        if request.callback_url is not None:
            self._check_literal_address("callBackUrl", request.callback_url)
        return request

    def _check_literal_address(self, field: str, url: str) -> None:
        """Refuse a private or loopback IP literal at once rather than as a failed task;
        host names are checked when fetched (they may resolve anywhere)."""
        if self._links.is_ours(url):
            return
        host = literal_host(url)
        if host is None or is_public_address(host) or self._allow.allows_address(host):
            return
        raise ValidationError(f"{field}: {host} is not a publicly routable address {ALLOW_HINT}")

    async def create(
        self,
        key: ApiKey,
        body: Mapping[str, Any],
        raw_body: bytes,
        *,
        idempotency_key: str | None = None,
    ) -> str:
        """Accept a task; returns its id once the row is durably committed.

        ``param`` keeps the body exactly as sent (``raw_body``): re-encoding the parsed
        body would round integers beyond 64 bits and fail on very deep ignored fields.
        The price is charged in the same transaction (402 and no task when it cannot be).
        """
        await self._switches.check_maintenance()
        request = self.validate(body)
        await self._switches.check_model(request.model, key.account_id)
        account = await self._accounts.cached_account(key.account_id)
        max_waiting = (
            account.max_waiting
            if account.max_waiting is not None
            else self._settings.max_waiting_tasks
        )
        admission = Admission(
            max_waiting=max_waiting or None,
            monthly_cap=account.monthly_cap,
            month_start_ms=month_start_ms(self._store.now_ms()),
        )
        provider = self._provider_choice.provider_name_for(request.model, is_test=key.is_test)
        if request.lane is Lane.BATCH:
            provider = batch_provider(self._provider_choice.plan, request.model, provider)
        idempotency = None
        if idempotency_key is not None:
            if not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
                raise ValidationError(
                    f"Idempotency-Key: must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
                )
            idempotency = IdempotencyClaim(
                key=idempotency_key,
                request_hash=request_fingerprint(body, raw_body),
                ttl_ms=self._settings.idempotency_ttl_seconds * 1000,
            )
        new = NewTask(
            id=new_task_id(),
            account_id=key.account_id,
            key_id=key.id,
            provider=provider,
            model=request.model,
            param=raw_body.decode(),
            input=request.input.model_dump_json(),
            callback_url=request.callback_url,
            credits=self._billing.price(key, request.model, request.input.resolution, request.lane),
            lane=request.lane.value,
        )
        created = await self._store.create_task(new, idempotency, admission)
        if not isinstance(created, Created):
            raise refusal_error(created)
        if created.created:  # an Idempotency-Key replay made nothing
            self._metrics.tasks_created.labels(new.model).inc()
            self._wakeups.publish(Topic.WORK)
        return created.task_id

    async def get(self, key: ApiKey, task_id: str) -> Task:
        """A task of the key's account; another account's task is as unknown as a missing one."""
        task = await self._store.get_task(task_id, key.account_id)
        if task is None:
            raise NotFoundError(f"task {task_id} not found")
        return task

    async def cancel(self, key: ApiKey, task_id: str) -> Task:
        asked_at = self._store.now_ms()
        task = await self._store.cancel_task(task_id, key.account_id, CANCELED)
        if task is None:
            raise NotFoundError(f"task {task_id} not found")
        self._wakeups.publish(Topic.TASKS, (task_id,))
        if task.fail_msg != CANCELED_MSG or task.state is not TaskState.FAIL:
            status = _TOO_LATE.get(task.state, f"is already {task.state.value}")
            raise ValidationError(f"taskId: the task {status}; it cannot be canceled")
        if task.completed_at is not None and task.completed_at >= asked_at:
            # Ended by this call, not by an earlier cancel (which answers the same).
            self._metrics.tasks_finished.labels(task.model, task.state.value, task.fail_code).inc()
        if task.callback_url:
            self._wakeups.publish(Topic.CALLBACKS)
        return task

    async def follow(
        self, key: ApiKey, task: Task, *, key_check: Callable[[], Awaitable[object]]
    ) -> AsyncGenerator[Task | None, None]:
        """An event stream's records: ``task`` (just read by the caller, who has answered
        404 already if there was none), then the task again each time it changes, until it
        ends (``success``/``fail``), the stream has lasted ``events_max_stream_seconds``
        or the server stops. ``None`` after ``events_heartbeat_seconds`` without news, so
        the caller can keep the connection alive.

        ``key_check`` authenticates the caller again (raising AuthenticationError) before
        anything more is sent: a stream ends once its key is revoked or expires, as soon
        as any other call with that key would be refused, not at its longest time.
        """
        if task.state.is_final:
            yield task
            return
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + self._settings.events_max_stream_seconds
        heartbeat = self._settings.events_heartbeat_seconds
        with self.watch.follow(task.id, version_of(task)) as follower:
            yield task
            while True:
                left = ends_at - loop.time()
                if left <= 0:
                    return
                changed = await follower.changed(min(heartbeat, left))
                if follower.closed:
                    return
                try:
                    await key_check()
                except AuthenticationError:
                    return
                if not changed:
                    if heartbeat < left:
                        yield None
                    continue
                try:
                    current = await self.get(key, task.id)
                except NotFoundError:
                    return
                if version_of(current) == follower.version:
                    continue
                follower.version = version_of(current)
                yield current
                if current.state.is_final:
                    return

    async def list(
        self,
        key: ApiKey,
        *,
        state: TaskState | None,
        limit: int,
        cursor: str | None,
        model: str | None = None,
    ) -> Page:
        """Newest first. ``model`` is matched exactly and not checked against the models
        served now: tasks of a model since removed from the settings can still be found
        (an unknown name finds nothing)."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationError(f"limit: must be between 1 and {MAX_PAGE}")
        before = decode_cursor(cursor) if cursor else None
        found = await self._store.list_tasks(
            key.account_id, state=state, limit=limit + 1, before_seq=before, model=model
        )
        more = len(found) > limit
        page = found[:limit]
        return Page(tasks=page, next_cursor=encode_cursor(page[-1].seq) if more else None)


def refusal_error(refused: CreateRefusal) -> Exception:
    """The envelope error of a task the store refused to make (nothing was written)."""
    match refused:
        case NotEnoughCredits(cost=cost):
            return InsufficientCreditsError(f"insufficient credits: this task costs {cost}")
        case MonthlyCapReached(spent=spent, cap=cap, cost=cost):
            return InsufficientCreditsError(
                f"monthly spending cap reached: {spent} of {cap} credits spent "
                f"this month, this task costs {cost}"
            )
        case TooManyWaiting(waiting=waiting, cap=cap):
            return RateLimitedError(
                f"too many waiting tasks: this account has {waiting} tasks waiting "
                f"(at most {cap}); try again when some have started",
                retry_after=1,
            )
        case KeyReused():
            return ValidationError("Idempotency-Key: already used for a different request body")


def version_of(task: Task) -> Version:
    return (task.state.value, task.updated_at)


def request_fingerprint(body: Mapping[str, Any], raw_body: bytes) -> str:
    """Equal for the same request sent again, whatever its key order or spacing; bodies
    too deep to re-encode fall back to their exact bytes."""
    try:
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        canonical = raw_body
    return hashlib.sha256(canonical).hexdigest()

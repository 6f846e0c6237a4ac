"""Frozen value objects that database rows become; the domain and the API pass these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from bananastand.contract import TaskState


@dataclass(frozen=True, slots=True)
class Task:
    """A task as stored: its row, lease columns aside. What clients see of it is the wire
    record (``contract.TaskRecord``), made from this by `bananastand.results.RecordMaker`."""

    seq: int
    id: str
    account_id: str
    key_id: str
    provider: str
    model: str
    state: TaskState
    param: str
    input: str
    callback_url: str | None
    #: Storage keys of the results; links to them are made when the record is handed out.
    result_keys: tuple[str, ...]
    fail_code: str
    fail_msg: str
    credits_consumed: int
    usage: str
    created_at: int
    updated_at: int
    started_at: int | None
    completed_at: int | None
    attempts: int
    #: The named upstream that took the task (None until one did), and what that upstream
    #: knows it by (a relayed task's upstream taskId; None for Google's one-call tasks).
    upstream: str | None = None
    upstream_handle: str | None = None
    #: ``now`` or ``batch`` (the Batch API's half price), and the batch job holding it.
    lane: str = "now"
    batch_job: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Task:
        values = {name: row[name] for name in cls.__slots__}
        values["state"] = TaskState(values["state"])
        values["result_keys"] = tuple(orjson.loads(values["result_keys"] or "[]"))
        return cls(**values)

    @property
    def cost_time_ms(self) -> int | None:
        """Processing time: from the first claim by a worker to the end (``None`` until then).

        A task canceled before any worker touched it cost nothing: 0.
        """
        if self.completed_at is None:
            return None
        if self.started_at is None:
            return 0
        return max(0, self.completed_at - self.started_at)


@dataclass(frozen=True, slots=True)
class Claim:
    """A task a worker holds; every write about it is fenced by ``lease_token``."""

    task: Task
    lease_token: str


@dataclass(frozen=True, slots=True)
class BatchJob:
    """A job of the batch lane: some tasks of one model sent to one upstream's Batch API."""

    id: str
    upstream: str
    model: str
    #: Sent along at creation: how a job whose creation answer was lost is found again.
    display_name: str
    #: ``open`` or ``done``.
    state: str
    #: The upstream's name for the job (``batches/...``); None until it answered.
    upstream_name: str | None
    tasks: int
    created_at: int
    updated_at: int
    #: When its tasks stop waiting for it (``batch_timeout_seconds`` after its creation).
    deadline_at: int
    #: How it ended, in words.
    outcome: str = ""

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> BatchJob:
        return cls(**{name: row[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    account_id: str
    name: str
    display_prefix: str
    is_test: bool
    created_at: int
    revoked_at: int | None
    expires_at: int | None
    #: When a request last came with it, to within a minute (None: never).
    last_used_at: int | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> ApiKey:
        return cls(
            id=row["id"],
            account_id=row["account_id"],
            name=row["name"],
            display_prefix=row["display_prefix"],
            is_test=row["is_test"],
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
            expires_at=row["expires_at"],
            last_used_at=row["last_used_at"],
        )

    def to_admin(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "accountId": self.account_id,
            "name": self.name,
            "prefix": self.display_prefix,
            "kind": "test" if self.is_test else "live",
            "createdAt": self.created_at,
            "revokedAt": self.revoked_at,
            "expiresAt": self.expires_at,
            "lastUsedAt": self.last_used_at,
        }

    def usable_at(self, now_ms: int) -> bool:
        if self.revoked_at is not None and self.revoked_at <= now_ms:
            return False
        return self.expires_at is None or self.expires_at > now_ms


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str
    created_at: int
    credits: int = 0
    #: Per-account overrides of the server defaults; ``None``: the default applies.
    create_rate: str | None = None
    read_rate: str | None = None
    max_waiting: int | None = None
    monthly_cap: int | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Account:
        return cls(**{name: row[name] for name in cls.__slots__})

    def to_admin(self) -> dict[str, Any]:
        """How the admin API and the CLI show an account."""
        return {
            "id": self.id,
            "name": self.name,
            "createdAt": self.created_at,
            "credits": self.credits,
            "createRate": self.create_rate,
            "readRate": self.read_rate,
            "maxWaiting": self.max_waiting,
            "monthlyCap": self.monthly_cap,
        }


@dataclass(frozen=True, slots=True)
class CallbackAttempt:
    attempted_at: int
    duration_ms: int
    http_status: int | None  # None: no answer (refused, could not connect, timed out)
    error: str
    success: bool

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> CallbackAttempt:
        return cls(**{name: row[name] for name in cls.__slots__})

    def to_wire(self) -> dict[str, Any]:
        return {
            "time": self.attempted_at,
            "durationMs": self.duration_ms,
            "httpStatus": self.http_status,
            "error": self.error,
            "success": self.success,
        }


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    seq: int
    account_id: str
    amount: int
    reason: str
    task_id: str | None
    note: str
    created_at: int

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> LedgerEntry:
        return cls(**{name: row[name] for name in cls.__slots__})

    def to_wire(self) -> dict[str, Any]:
        """How the account's ledger and the admin API show a row."""
        return {
            "amount": self.amount,
            "reason": self.reason,
            "taskId": self.task_id,
            "note": self.note,
            "createdAt": self.created_at,
        }


class DeliveryState(StrEnum):
    """Where a task's callback stands: the ``deliveryState`` clients read."""

    #: The task has not ended: there is nothing to send yet (and no outbox row).
    WAITING = "waiting"
    #: Due now or at ``next_attempt_at``: the first attempt, or a retry after a failure.
    PENDING = "pending"
    #: A receiver answered 2xx. Final.
    DELIVERED = "delivered"
    #: Out of retries, or the receiver answered ``410 Gone``. Final, until a resend.
    FAILED = "failed"
    #: Never sent: the host is in the operator's ``callback_deny_hosts``. Final, until a
    #: resend once the setting no longer denies it.
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Callback:
    """A task's callback in the outbox, with every attempt made so far, oldest first."""

    id: str | None  # the webhook-id; None until the task ends
    task_id: str
    url: str
    state: DeliveryState
    next_attempt_at: int | None
    delivered_at: int | None
    attempts: tuple[CallbackAttempt, ...]
    #: The named upstream that served the task (None: none took it).
    upstream: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "taskId": self.task_id,
            "upstream": self.upstream,
            "webhookId": self.id,
            "callBackUrl": self.url,
            "deliveryState": self.state.value,
            "nextAttemptTime": (
                self.next_attempt_at if self.state is DeliveryState.PENDING else None
            ),
            "deliveredTime": self.delivered_at,
            "attempts": [attempt.to_wire() for attempt in self.attempts],
        }


@dataclass(frozen=True, slots=True)
class WebhookSecret:
    account_id: str
    secret: str
    previous_secret: str | None
    rotated_at: int | None
    created_at: int

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> WebhookSecret:
        return cls(**{name: row[name] for name in cls.__slots__})

    def signing_secrets(self, now_ms: int, window_ms: int) -> tuple[str, ...]:
        """The secrets a callback is signed with now: the current one first, then the
        previous one while the rotation window is open."""
        if (
            self.previous_secret is not None
            and self.rotated_at is not None
            and now_ms < self.rotated_at + window_ms
        ):
            return (self.secret, self.previous_secret)
        return (self.secret,)


@dataclass(frozen=True, slots=True)
class LiveWorker:
    """A worker process as its last heartbeat left it in the registry."""

    id: str
    host: str
    pid: int
    role: str
    started_at: int
    heartbeat_at: int
    #: Live until then unless it beats again: a few of its heartbeat intervals later.
    live_until: int
    concurrency: int
    in_flight: int

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> LiveWorker:
        return cls(**{name: row[name] for name in cls.__slots__})

    def to_admin(self) -> dict[str, Any]:
        """How the admin API and the CLI show a worker."""
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "role": self.role,
            "startedAt": self.started_at,
            "heartbeatAt": self.heartbeat_at,
            "liveUntil": self.live_until,
            "concurrency": self.concurrency,
            "inFlight": self.in_flight,
        }


class BreakerState(StrEnum):
    CLOSED = "closed"  # tasks go to the upstream
    OPEN = "open"  # none do, until the cool-down has passed
    HALF_OPEN = "half_open"  # one trial task does; its outcome closes or reopens it


@dataclass(frozen=True, slots=True)
class Breaker:
    """An upstream's circuit breaker as the cluster shares it (no row: closed, no
    failures). Times are the store's clock."""

    name: str
    state: BreakerState
    #: Consecutive failures (a success resets them).
    failures: int
    opened_at: int | None
    updated_at: int

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Breaker:
        values = {name: row[name] for name in cls.__slots__}
        values["state"] = BreakerState(values["state"])
        return cls(**values)

    @classmethod
    def closed(cls, name: str) -> Breaker:
        return cls(name, BreakerState.CLOSED, 0, None, 0)

    def to_admin(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "failures": self.failures,
            "openedAt": self.opened_at,
            "updatedAt": self.updated_at or None,
        }

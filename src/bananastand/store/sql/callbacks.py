"""Every query about callbacks: the outbox, its attempts, and the accounts' webhook secrets.

The outbox is a queue like the task table: a sender claims due rows with a lease, and
every write about a claimed row is fenced by its lease token. A sender killed mid-delivery
stops renewing nothing (deliveries are short); its lease simply runs out and another
claim sends the callback again, with the same webhook-id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from urllib.parse import urlsplit

from sqlalchemy import ColumnElement, Connection, and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from bananastand.ids import random_token
from bananastand.records import Callback, CallbackAttempt, DeliveryState, Task, WebhookSecret
from bananastand.store.ports import ClaimedCallback
from bananastand.store.sql.accounts import get_account
from bananastand.store.tables import callback_attempts, callbacks, tasks, webhook_secrets

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: The column holds the plain value (a driver may write an enum by its name).
_PENDING = DeliveryState.PENDING.value


def host_key(url: str) -> str:
    """``host:port`` of a URL: deliveries are limited per receiving endpoint."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{(parts.hostname or '').lower()}:{port or _DEFAULT_PORTS.get(parts.scheme, 0)}"


def enqueue(
    connection: Connection, *, task_id: str, account_id: str, url: str, now_ms: int
) -> None:
    """Put a callback in the outbox; called inside the transaction that ends the task."""
    connection.execute(
        insert(callbacks).values(
            id="msg_" + random_token(24),
            task_id=task_id,
            account_id=account_id,
            url=url,
            host_key=host_key(url)[:300],
            state=_PENDING,
            tries=0,
            next_attempt_at=now_ms,
            created_at=now_ms,
            updated_at=now_ms,
        )
    )


def due(now_ms: int) -> ColumnElement[bool]:
    """Callbacks a sender may take now: pending, their attempt due, no live lease."""
    return and_(
        callbacks.c.state == _PENDING,
        callbacks.c.next_attempt_at <= now_ms,
        or_(callbacks.c.lease_expires_at.is_(None), callbacks.c.lease_expires_at < now_ms),
    )


def claim_due(
    connection: Connection,
    *,
    lease_token: str,
    limit: int,
    per_host: int,
    in_flight: Mapping[str, int],
    now_ms: int,
    lease_ms: int,
    new_secret: Callable[[], str],
) -> list[ClaimedCallback]:
    """Take up to ``limit`` due callbacks, at most ``per_host`` in flight per host.

    ``in_flight`` counts what the caller already sends per host; saturated hosts are
    skipped in the query itself, so a receiver with a long backlog never hides the others.
    """
    saturated = [host for host, count in in_flight.items() if count >= per_host]
    query = select(callbacks.c.id, callbacks.c.host_key).where(due(now_ms))
    if saturated:
        query = query.where(callbacks.c.host_key.not_in(saturated))
    # Rows another sender is claiming are skipped (SQLite's compiler leaves this out).
    query = (
        query.order_by(callbacks.c.next_attempt_at)
        .limit(limit * 4)
        .with_for_update(skip_locked=True)
    )
    counts = dict(in_flight)
    chosen: list[str] = []
    for callback_id, host in connection.execute(query):
        if len(chosen) >= limit:
            break
        if counts.get(host, 0) < per_host:
            counts[host] = counts.get(host, 0) + 1
            chosen.append(callback_id)
    if not chosen:
        return []
    connection.execute(
        update(callbacks)
        .where(callbacks.c.id.in_(chosen))
        .values(lease_token=lease_token, lease_expires_at=now_ms + lease_ms)
    )
    rows = (
        connection.execute(
            select(
                callbacks.c.id.label("callback_id"),
                callbacks.c.url.label("callback_url_"),
                callbacks.c.host_key,
                callbacks.c.tries,
                *tasks.c,
            )
            .join(tasks, tasks.c.id == callbacks.c.task_id)
            .where(callbacks.c.id.in_(chosen))
            .order_by(callbacks.c.next_attempt_at)
        )
        .mappings()
        .all()
    )
    secrets = {
        account_id: ensure_secret(connection, account_id, now_ms, new_secret)
        for account_id in {row["account_id"] for row in rows}
    }
    return [
        ClaimedCallback(
            id=row["callback_id"],
            lease_token=lease_token,
            url=row["callback_url_"],
            host_key=row["host_key"],
            tries=row["tries"],
            task=Task.from_row(row),
            secret=secrets[row["account_id"]],
        )
        for row in rows
    ]


def _fenced(callback_id: str, lease_token: str) -> ColumnElement[bool]:
    return and_(
        callbacks.c.id == callback_id,
        callbacks.c.lease_token == lease_token,
        callbacks.c.state == _PENDING,
    )


def record_attempt(
    connection: Connection,
    *,
    callback_id: str,
    lease_token: str,
    attempt: CallbackAttempt,
    state: DeliveryState,
    next_attempt_at: int | None,
    now_ms: int,
) -> bool:
    """Store an attempt (always: it happened) and the callback's next step (fenced).

    False when the lease was gone meanwhile (a resend took the row over).
    """
    connection.execute(
        insert(callback_attempts).values(
            callback_id=callback_id,
            attempted_at=attempt.attempted_at,
            duration_ms=attempt.duration_ms,
            http_status=attempt.http_status,
            error=attempt.error,
            success=attempt.success,
        )
    )
    result = connection.execute(
        update(callbacks)
        .where(_fenced(callback_id, lease_token))
        .values(
            state=state.value,
            tries=callbacks.c.tries + 1,
            next_attempt_at=next_attempt_at,
            delivered_at=now_ms if state is DeliveryState.DELIVERED else None,
            lease_token=None,
            lease_expires_at=None,
            updated_at=now_ms,
        )
    )
    return result.rowcount == 1


def release(connection: Connection, held: Iterable[tuple[str, str]]) -> int:
    """Hand back interrupted deliveries (shutdown): due again at once, no attempt counted."""
    released = 0
    for callback_id, lease_token in held:
        result = connection.execute(
            update(callbacks)
            .where(_fenced(callback_id, lease_token))
            .values(lease_token=None, lease_expires_at=None)
        )
        released += result.rowcount
    return released


def get_callback(connection: Connection, task_id: str, account_id: str) -> Callback | None:
    row = (
        connection.execute(
            select(callbacks).where(
                callbacks.c.task_id == task_id, callbacks.c.account_id == account_id
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    attempts = connection.execute(
        select(callback_attempts)
        .where(callback_attempts.c.callback_id == row["id"])
        .order_by(callback_attempts.c.seq)
    ).mappings()
    return Callback(
        id=row["id"],
        task_id=row["task_id"],
        url=row["url"],
        state=DeliveryState(row["state"]),
        next_attempt_at=row["next_attempt_at"],
        delivered_at=row["delivered_at"],
        attempts=tuple(CallbackAttempt.from_row(attempt) for attempt in attempts),
    )


def callback_of_task(
    connection: Connection, task_id: str, account_id: str
) -> tuple[Task | None, Callback | None]:
    """The account's task and its callback (None until the task ends)."""
    row = (
        connection.execute(
            select(tasks).where(tasks.c.id == task_id, tasks.c.account_id == account_id)
        )
        .mappings()
        .first()
    )
    if row is None:
        return None, None
    return Task.from_row(row), get_callback(connection, task_id, account_id)


def resend(connection: Connection, task_id: str, account_id: str, now_ms: int) -> bool:
    """Make the callback due now, with a fresh retry schedule and the same webhook-id.

    Clearing the lease fences out a delivery still in flight: its outcome is recorded as
    an attempt but no longer decides the callback's state.
    """
    result = connection.execute(
        update(callbacks)
        .where(callbacks.c.task_id == task_id, callbacks.c.account_id == account_id)
        .values(
            state=_PENDING,
            tries=0,
            next_attempt_at=now_ms,
            lease_token=None,
            lease_expires_at=None,
            updated_at=now_ms,
        )
    )
    return result.rowcount == 1


# -- webhook secrets ---------------------------------------------------------------------


def get_secret(connection: Connection, account_id: str) -> WebhookSecret | None:
    row = (
        connection.execute(
            select(webhook_secrets).where(webhook_secrets.c.account_id == account_id)
        )
        .mappings()
        .first()
    )
    return WebhookSecret.from_row(row) if row else None


def ensure_secret(
    connection: Connection, account_id: str, now_ms: int, new_secret: Callable[[], str]
) -> WebhookSecret:
    """The account's secret, made on first use."""
    found = get_secret(connection, account_id)
    if found is not None:
        return found
    made = WebhookSecret(
        account_id=account_id,
        secret=new_secret(),
        previous_secret=None,
        rotated_at=None,
        created_at=now_ms,
    )
    try:
        with connection.begin_nested():
            connection.execute(
                insert(webhook_secrets).values(
                    account_id=made.account_id, secret=made.secret, created_at=made.created_at
                )
            )
    except IntegrityError:  # another process made it first (PostgreSQL)
        raced = get_secret(connection, account_id)
        if raced is None:
            raise
        return raced
    return made


def rotate_secret(
    connection: Connection, account_id: str, now_ms: int, new_secret: Callable[[], str]
) -> WebhookSecret:
    """A new secret; the old one keeps signing until the rotation window closes."""
    current = get_secret(connection, account_id)
    if current is None:
        return ensure_secret(connection, account_id, now_ms, new_secret)
    secret = new_secret()
    connection.execute(
        update(webhook_secrets)
        .where(webhook_secrets.c.account_id == account_id)
        .values(secret=secret, previous_secret=current.secret, rotated_at=now_ms)
    )
    return WebhookSecret(
        account_id=account_id,
        secret=secret,
        previous_secret=current.secret,
        rotated_at=now_ms,
        created_at=current.created_at,
    )


def account_secret(
    connection: Connection,
    account_id: str,
    now_ms: int,
    new_secret: Callable[[], str],
    *,
    rotate: bool,
) -> WebhookSecret | None:
    """The account's secret (made on first use), rotated first if asked; None: no account."""
    if get_account(connection, account_id) is None:
        return None
    if rotate:
        return rotate_secret(connection, account_id, now_ms, new_secret)
    return ensure_secret(connection, account_id, now_ms, new_secret)

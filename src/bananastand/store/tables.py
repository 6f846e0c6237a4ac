"""The tables. Times are epoch milliseconds (BIGINT): the wire format, and portable."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

#: A 64-bit key that grows with every row; on SQLite plain INTEGER, the alias of the rowid
#: (already 64 bits there), which BIGINT would not be.
SEQUENCE = BigInteger().with_variant(Integer, "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, server_default=""),
    Column("created_at", BigInteger, nullable=False),
    # The balance, kept equal to the sum of the account's ledger rows in the same
    # transaction as each row (a cache for speed; ``credits audit`` proves it).
    Column("credits", BigInteger, nullable=False, server_default="0"),
    # Per-account overrides; NULL means the server-wide default setting.
    Column("create_rate", String(64), nullable=True),
    Column("read_rate", String(64), nullable=True),
    Column("max_waiting", Integer, nullable=True),
    Column("monthly_cap", BigInteger, nullable=True),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False, server_default=""),
    # What the owner sees in listings (``bs_live_AbCd``); the secret itself is never stored.
    Column("display_prefix", String(24), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("is_test", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
    Column("expires_at", BigInteger, nullable=True),
    # Within a minute or so: each process records a key's use at most once a minute.
    Column("last_used_at", BigInteger, nullable=True),
)

tasks = Table(
    "tasks",
    metadata,
    # ``seq`` orders tasks for the queue and for pagination; ``id`` is the public, opaque one.
    Column("seq", SEQUENCE, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("account_id", String(40), nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("model", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("param", Text, nullable=False),  # the original request body, as JSON text
    Column("input", Text, nullable=False),  # the validated input, as JSON text
    Column("callback_url", Text, nullable=True),
    #: JSON list of storage keys; links to them are made when a record is handed out.
    Column("result_keys", Text, nullable=False, server_default=""),
    Column("fail_code", String(8), nullable=False, server_default=""),
    Column("fail_msg", Text, nullable=False, server_default=""),
    Column("credits_consumed", BigInteger, nullable=False, server_default="0"),
    Column("usage", Text, nullable=False, server_default="{}"),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("started_at", BigInteger, nullable=True),
    Column("completed_at", BigInteger, nullable=True),
    # The lease: a claim on the task by one worker, fenced by a token no other claim shares.
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("lease_token", String(32), nullable=True),
    Column("lease_expires_at", BigInteger, nullable=True),
    Column("worker_id", String(64), nullable=True),
    # The named upstream that took the task, and what it knows the task by (a relayed
    # task's upstream taskId): a restarted worker follows that one, never a second.
    Column("upstream", String(64), nullable=True),
    Column("upstream_handle", Text, nullable=True),
    # ``now`` or ``batch``; a batch-lane task inside a job names the job (``batch_jobs.id``).
    Column("lane", String(8), nullable=False, server_default="now"),
    Column("batch_job", String(40), nullable=True),
    Index("ix_tasks_state_seq", "state", "seq"),
    Index("ix_tasks_account_id_seq", "account_id", "seq"),
    Index("ix_tasks_lease_expires_at", "lease_expires_at"),
    Index("ix_tasks_account_id_state", "account_id", "state"),
    # The list filtered by model pages through one model's tasks, not the account's.
    Index("ix_tasks_account_id_model_seq", "account_id", "model", "seq"),
    # An upstream's callback names its own taskId: this finds ours.
    Index("ix_tasks_upstream_handle", "upstream", "upstream_handle"),
    # The batch singleton's look at the tasks waiting for a job, and at a job's tasks.
    Index("ix_tasks_lane_state_seq", "lane", "state", "seq"),
    Index("ix_tasks_batch_job", "batch_job"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("account_id", String(40), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("task_id", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

credit_ledger = Table(
    "credit_ledger",
    metadata,
    # Every charge (negative), refund and grant (positive) of credits, never updated.
    Column("seq", SEQUENCE, primary_key=True, autoincrement=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("reason", String(16), nullable=False),
    Column("task_id", String(64), nullable=True),
    Column("note", Text, nullable=False, server_default=""),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_credit_ledger_account_id_created_at", "account_id", "created_at"),
    # One charge and at most one refund per task, whatever retries happen.
    Index("uq_credit_ledger_task_id_reason", "task_id", "reason", unique=True),
)

switches = Table(
    "switches",
    metadata,
    # Operator switches every server process polls: maintenance, disabled models.
    Column("name", String(200), primary_key=True),
    Column("value", Text, nullable=False, server_default=""),
    Column("updated_at", BigInteger, nullable=False),
)

webhook_secrets = Table(
    "webhook_secrets",
    metadata,
    Column("account_id", String(40), ForeignKey("accounts.id"), primary_key=True),
    Column("secret", String(64), nullable=False),
    # The secret before the last rotation; still signs until the rotation window closes.
    Column("previous_secret", String(64), nullable=True),
    Column("rotated_at", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
)

# The callback outbox: one row per task with a callBackUrl, written in the transaction
# that ends the task, claimed with a lease by a sender like tasks are by workers.
callbacks = Table(
    "callbacks",
    metadata,
    Column("id", String(40), primary_key=True),  # the webhook-id, stable across attempts
    Column("task_id", String(64), nullable=False, unique=True),
    Column("account_id", String(40), nullable=False),
    Column("url", Text, nullable=False),
    Column("host_key", String(300), nullable=False),  # host:port, for fairness per receiver
    Column("state", String(16), nullable=False),  # pending | delivered | failed | refused
    Column("tries", Integer, nullable=False, server_default="0"),  # in the current series
    Column("next_attempt_at", BigInteger, nullable=True),
    Column("lease_token", String(32), nullable=True),
    Column("lease_expires_at", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("delivered_at", BigInteger, nullable=True),
    Index("ix_callbacks_state_next_attempt_at", "state", "next_attempt_at"),
)

callback_attempts = Table(
    "callback_attempts",
    metadata,
    Column("seq", SEQUENCE, primary_key=True, autoincrement=True),
    Column("callback_id", String(40), ForeignKey("callbacks.id"), nullable=False, index=True),
    Column("attempted_at", BigInteger, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("http_status", Integer, nullable=True),  # None: no answer (refused, timeout, ...)
    Column("error", Text, nullable=False, server_default=""),
    Column("success", Boolean, nullable=False),
)

# The live-worker registry: each worker process upserts its row at every heartbeat and
# deletes it when it stops cleanly; a row past its ``live_until`` is a worker that died.
workers = Table(
    "workers",
    metadata,
    Column("id", String(300), primary_key=True),  # the worker's worker_id
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("role", String(32), nullable=False),  # "worker", or "serve" (API + worker)
    Column("started_at", BigInteger, nullable=False),
    Column("heartbeat_at", BigInteger, nullable=False),  # by the store's clock
    # Each row says how long it counts as live (a few of its own heartbeat intervals):
    # a listing needs no setting of the writer's, and workers may beat at different paces.
    Column("live_until", BigInteger, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("in_flight", Integer, nullable=False),
)

# Named leases for jobs that must run once per cluster: the holder renews its lease while
# it lives; once ``expires_at`` passes, any process may take it.
leases = Table(
    "leases",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("holder", String(300), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

# Each upstream's circuit breaker, shared by every process: ``state`` is closed, open or
# half_open; ``failures`` counts consecutive failures; an open breaker half-opens once its
# cool-down has passed since ``opened_at`` (by the store's clock).
upstream_breakers = Table(
    "upstream_breakers",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("failures", Integer, nullable=False, server_default="0"),
    Column("opened_at", BigInteger, nullable=True),
    Column("updated_at", BigInteger, nullable=False),
)

# The batch lane's jobs: one row per job sent (or about to be sent) to an upstream's Batch
# API. ``display_name`` is unique and sent along, so a job whose creation answer was lost
# is found again at the upstream; ``upstream_name`` is the upstream's id for it (None
# until known). ``state``: open | done; ``deadline_at``: when its tasks stop waiting.
batch_jobs = Table(
    "batch_jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("upstream", String(64), nullable=False),
    Column("model", String(64), nullable=False),
    Column("display_name", String(128), nullable=False, unique=True),
    Column("state", String(16), nullable=False),
    Column("upstream_name", Text, nullable=True),
    Column("tasks", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("deadline_at", BigInteger, nullable=False),
    Column("outcome", Text, nullable=False, server_default=""),
)

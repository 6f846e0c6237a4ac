"""the batch lane: a task's lane, the batch jobs, and which job holds a task

Revision ID: 0013
Revises: 0012

``tasks.lane``: ``now`` (a worker runs it) or ``batch`` (the cluster's batch singleton
sends it to its upstream's Batch API, at the batch price). ``tasks.batch_job``: the job
that holds the task, written before the job is sent: a singleton that restarts finds the
job again (by its id, or at the upstream by its display name) instead of sending a second
one. ``batch_jobs``: one row per job, with the upstream's name for it once it has one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lane", sa.String(8), nullable=False, server_default="now"))
        batch_op.add_column(sa.Column("batch_job", sa.String(40), nullable=True))
        batch_op.create_index("ix_tasks_lane_state_seq", ["lane", "state", "seq"], unique=False)
        batch_op.create_index("ix_tasks_batch_job", ["batch_job"], unique=False)
    op.create_table(
        "batch_jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("upstream", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("upstream_name", sa.Text(), nullable=True),
        sa.Column("tasks", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("deadline_at", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False, server_default=""),
        sa.UniqueConstraint("display_name", name=op.f("uq_batch_jobs_display_name")),
    )


def downgrade() -> None:
    op.drop_table("batch_jobs")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_batch_job")
        batch_op.drop_index("ix_tasks_lane_state_seq")
        batch_op.drop_column("batch_job")
        batch_op.drop_column("lane")

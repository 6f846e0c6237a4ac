"""which upstream serves a task, and the cluster's circuit breakers

Revision ID: 0012
Revises: 0011

``tasks.upstream``: the named upstream that took the task (set when it starts
generating there; a failover moves it on). ``tasks.upstream_handle``: what that upstream
knows the task by (a relayed task's upstream taskId), written before the task shows
``generating`` so that a restarted worker follows the same upstream task instead of
creating a second one. ``upstream_breakers``: one row per upstream whose breaker has
counted a failure, shared by every process of the cluster.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("upstream", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("upstream_handle", sa.Text(), nullable=True))
        batch_op.create_index(
            "ix_tasks_upstream_handle", ["upstream", "upstream_handle"], unique=False
        )
    op.create_table(
        "upstream_breakers",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("opened_at", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("upstream_breakers")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_upstream_handle")
        batch_op.drop_column("upstream_handle")
        batch_op.drop_column("upstream")

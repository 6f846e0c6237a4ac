"""64-bit sequence keys and credits per task

Revision ID: 0008
Revises: 0007

The row counters of tasks, the ledger and callback attempts, and a task's
creditsConsumed, become BIGINT. On SQLite nothing changes: an INTEGER primary key is the
64-bit rowid already, and every integer column holds 64 bits.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_WIDENED = (
    ("tasks", "seq"),
    ("tasks", "credits_consumed"),
    ("credit_ledger", "seq"),
    ("callback_attempts", "seq"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, column in _WIDENED:
        op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer())


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, column in _WIDENED:
        op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger())

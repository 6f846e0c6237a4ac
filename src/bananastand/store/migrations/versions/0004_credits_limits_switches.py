"""credits ledger, account limits, operator switches

Revision ID: 0004
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "accounts", sa.Column("credits", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.add_column("accounts", sa.Column("create_rate", sa.String(length=64), nullable=True))
    op.add_column("accounts", sa.Column("read_rate", sa.String(length=64), nullable=True))
    op.add_column("accounts", sa.Column("max_waiting", sa.Integer(), nullable=True))
    op.add_column("accounts", sa.Column("monthly_cap", sa.BigInteger(), nullable=True))
    op.create_index("ix_tasks_account_id_state", "tasks", ["account_id", "state"])
    op.create_table(
        "credit_ledger",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.Column("note", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_credit_ledger_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_credit_ledger")),
    )
    op.create_index(
        "ix_credit_ledger_account_id_created_at", "credit_ledger", ["account_id", "created_at"]
    )
    op.create_index(
        "uq_credit_ledger_task_id_reason", "credit_ledger", ["task_id", "reason"], unique=True
    )
    op.create_table(
        "switches",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Text(), server_default="", nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_switches")),
    )


def downgrade() -> None:
    op.drop_table("switches")
    op.drop_index("uq_credit_ledger_task_id_reason", table_name="credit_ledger")
    op.drop_index("ix_credit_ledger_account_id_created_at", table_name="credit_ledger")
    op.drop_table("credit_ledger")
    op.drop_index("ix_tasks_account_id_state", table_name="tasks")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("monthly_cap")
        batch.drop_column("max_waiting")
        batch.drop_column("read_rate")
        batch.drop_column("create_rate")
        batch.drop_column("credits")

"""an index for listing an account's tasks of one model

Revision ID: 0010
Revises: 0009

``GET /api/v1/jobs/list?model=`` pages newest first through one model's tasks; without
this index each page would walk the account's tasks of every model to find them.
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_account_id_model_seq", "tasks", ["account_id", "model", "seq"])


def downgrade() -> None:
    op.drop_index("ix_tasks_account_id_model_seq", table_name="tasks")

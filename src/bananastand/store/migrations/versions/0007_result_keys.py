"""tasks keep their results' storage keys, not links

Revision ID: 0007
Revises: 0006

Links are made when a record is handed out, from the public URL of that moment; a link
stored at the end of a task pointed at wherever the server ran then. Each stored
``resultUrls`` entry becomes the storage key its signed path names. An entry that is not
one of our file links (none is written by this version) is kept as it was: handed out
unchanged.
"""

from __future__ import annotations

import json
import re
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: ``/files/{expires}/{signature}/{key}``, as storage.links writes it (copied, not imported:
#: a migration must keep meaning what it meant when it was written).
_FILE_LINK = re.compile(r"/files/\d{1,12}/[A-Za-z0-9_-]{32}/(.+)$")

_tasks = sa.table(
    "tasks",
    sa.column("seq", sa.Integer),
    sa.column("result_json", sa.Text),
    sa.column("result_keys", sa.Text),
)


def _key(url: str) -> str:
    found = _FILE_LINK.search(urlsplit(url).path)
    return unquote(found.group(1)) if found else url


def upgrade() -> None:
    op.add_column("tasks", sa.Column("result_keys", sa.Text(), server_default="", nullable=False))
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_tasks.c.seq, _tasks.c.result_json).where(_tasks.c.result_json != "")
    ).all()
    for seq, result_json in rows:
        try:
            urls = json.loads(result_json).get("resultUrls") or []
        except (ValueError, AttributeError):
            urls = []
        keys = [_key(url) for url in urls if isinstance(url, str)]
        connection.execute(
            sa.update(_tasks)
            .where(_tasks.c.seq == seq)
            .values(result_keys=json.dumps(keys) if keys else "")
        )
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("result_json")


def downgrade() -> None:
    raise NotImplementedError("links are made at hand-out time; there is no way back")

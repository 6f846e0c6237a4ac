"""Point reads by key in two shapes (``runner.KeyedLookup``): one key, or the keys of every
caller waiting at once in one statement, which a runner chooses between."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, bindparam, select

from bananastand.records import Task
from bananastand.store.sql import tasks as task_queries
from bananastand.store.tables import tasks

#: ``(task_id, account_id)``: a task asked for by an account.
TaskOfAccount = tuple[str, str]

_TASKS_BY_ID = select(tasks).where(tasks.c.id.in_(bindparam("ids", expanding=True)))


def task_of_account(connection: Connection, key: TaskOfAccount) -> Task | None:
    """The task, if it is the account's: recordInfo's query."""
    task_id, account_id = key
    return task_queries.get_task(connection, task_id, account_id)


def tasks_of_accounts(connection: Connection, keys: Sequence[TaskOfAccount]) -> list[Task | None]:
    """``task_of_account`` of each key, in one statement for all (per ``VERSION_CHUNK``
    ids): the rows by id, then each key's only if it is its account's. An account never
    gets another's task, even in a batch with that account's own callers."""
    ids = list(dict.fromkeys(task_id for task_id, _ in keys))
    found: dict[str, Task] = {}
    for start in range(0, len(ids), task_queries.VERSION_CHUNK):
        chunk = ids[start : start + task_queries.VERSION_CHUNK]
        for row in connection.execute(_TASKS_BY_ID, {"ids": chunk}).mappings():
            found[row["id"]] = Task.from_row(row)
    answers: list[Task | None] = []
    for task_id, account_id in keys:
        task = found.get(task_id)
        answers.append(task if task is not None and task.account_id == account_id else None)
    return answers

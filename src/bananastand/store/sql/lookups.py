"""Point reads by key in two shapes (``runner.KeyedLookup``): one key, or the keys of every
caller waiting at once in one statement, which a runner chooses between."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import BindParameter, Connection, bindparam, select

from bananastand.records import Task
from bananastand.store.sql import tasks as task_queries
from bananastand.store.sql.prepared import PreparedQuery
from bananastand.store.tables import tasks

#: ``(task_id, account_id)``: a task asked for by an account.
TaskOfAccount = tuple[str, str]

#: Most ids in one statement; a longer list is sent in parts.
MAX_IDS = 256


def task_of_account(connection: Connection, key: TaskOfAccount) -> Task | None:
    """The task, if it is the account's: recordInfo's query."""
    task_id, account_id = key
    return task_queries.get_task(connection, task_id, account_id)


def tasks_of_accounts(connection: Connection, keys: Sequence[TaskOfAccount]) -> list[Task | None]:
    """``task_of_account`` of each key, in one statement for all: the rows by id, then each
    key's only if it is its account's. An account never gets another's task, even in a
    batch with that account's own callers."""
    ids = list(dict.fromkeys(task_id for task_id, _ in keys))
    found: dict[str, Task] = {}
    for start in range(0, len(ids), MAX_IDS):
        for row in _tasks_by_ids(connection, ids[start : start + MAX_IDS]):
            found[row["id"]] = Task.from_row(row)
    answers: list[Task | None] = []
    for task_id, account_id in keys:
        task = found.get(task_id)
        answers.append(task if task is not None and task.account_id == account_id else None)
    return answers


#: list length -> ``SELECT ... WHERE id IN (:id_0, ...)`` of that many ids.
_BY_IDS: dict[int, PreparedQuery] = {}


def _tasks_by_ids(connection: Connection, ids: list[str]) -> list[dict[str, Any]]:
    """The rows of ``ids``, by a statement compiled once per length: the lengths are powers
    of two (the list is padded with its last id), so there are few statements, and the
    database's prepared plans (psycopg prepares a statement run often) are reused."""
    size = 1 << (len(ids) - 1).bit_length()
    query = _BY_IDS.get(size)
    if query is None:
        names: list[BindParameter[str]] = [bindparam(f"id_{n}") for n in range(size)]
        query = _BY_IDS[size] = PreparedQuery(select(tasks).where(tasks.c.id.in_(names)))
    padded = ids + [ids[-1]] * (size - len(ids))
    return query.all(connection, **{f"id_{n}": task_id for n, task_id in enumerate(padded)})

"""A task's wire record, with links to its results made at the moment it is handed out.

The store keeps storage keys, never links: a link names the server's public URL, and a
server restarted on another port or behind a new domain must hand out links that work
there, for old tasks too. A result link expires ``result_link_seconds`` after the task
ended, so one record gives the same link on every read (and every callback attempt)
until the public URL or the signing secret changes.
"""

from __future__ import annotations

from typing import Any

import orjson

from bananastand.records import Task
from bananastand.storage.links import LinkSigner
from bananastand.thumbnails import thumbnail_key


class RecordMaker:
    """Makes the wire record (``contract.TaskRecord``, field for field) of a stored task."""

    def __init__(
        self, links: LinkSigner, result_link_seconds: int, result_retention_seconds: int
    ) -> None:
        self._links = links
        self._lifetime_s = result_link_seconds
        self._preview_lifetime_s = max(result_link_seconds, result_retention_seconds)

    def result_urls(self, task: Task) -> list[str]:
        if not task.result_keys:
            return []
        ended_s = _ended_s(task)
        return [self._link(key, ended_s + self._lifetime_s) for key in task.result_keys]

    def record(self, task: Task) -> dict[str, Any]:
        """The ``data`` of recordInfo, the list, event streams and callbacks.

        A plain dict rather than a ``TaskRecord``: recordInfo is the API's hottest answer,
        and the suite holds every answer to the model's fields."""
        urls = self.result_urls(task)
        return {
            "taskId": task.id,
            "model": task.model,
            "state": task.state.value,
            "param": task.param,
            "resultJson": orjson.dumps({"resultUrls": urls}).decode() if urls else "",
            "failCode": task.fail_code,
            "failMsg": task.fail_msg,
            "costTime": task.cost_time_ms,
            "createTime": task.created_at,
            "updateTime": task.updated_at,
            "completeTime": task.completed_at,
            "creditsConsumed": task.credits_consumed,
        }

    def list_item(self, task: Task) -> dict[str, Any]:
        """An item of the list: the record, ``thumbnailUrl`` and ``upstream``."""
        return {
            **self.record(task),
            "thumbnailUrl": self.thumbnail_url(task),
            "upstream": task.upstream,
        }

    def thumbnail_url(self, task: Task) -> str | None:
        """A link to the preview of the first result (made on its first request), or
        None while there is none (the task has not succeeded).

        It lasts as long as the result is kept (``result_retention_seconds`` after the
        task ended; its result link's lifetime where that is longer): a list of older
        tasks still shows what each made, where the result links in their records may
        have expired (``download-url`` gives a fresh one).
        """
        first = next(iter(task.result_keys), None)
        if first is None or _is_foreign(first):
            return None
        return self._links.url(thumbnail_key(first), _ended_s(task) + self._preview_lifetime_s)

    def _link(self, key: str, expires_at: int) -> str:
        # Stored before links were made at hand-out time and not one of ours: kept as is.
        if _is_foreign(key):
            return key
        return self._links.url(key, expires_at)


def _ended_s(task: Task) -> int:
    return (task.completed_at or task.updated_at) // 1000


def _is_foreign(key: str) -> bool:
    """A result stored as a link before links were made at hand-out time, not one of ours."""
    return key.startswith(("http://", "https://"))

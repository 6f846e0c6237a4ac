"""Deleting files past their retention: uploads after ``upload_retention_seconds``,
results after ``result_retention_seconds``, counted from their last write.

One worker of the cluster sweeps now and then (the one holding the periodic-jobs lease,
``membership``), and ``bananastand files sweep`` sweeps on demand. Two sweeps at once
(that command beside the worker, or the moment a lease passes on) are still safe:
deleting is idempotent on every backend, and each file is looked at again just before it
goes, so one written anew (an upload overwritten under the same name) since the listing
is kept. A result's preview (``thumbnails``) is deleted with its result.
"""

from __future__ import annotations

import logging

from bananastand.files import RESULTS, UPLOADS
from bananastand.settings import Settings
from bananastand.storage.base import Storage
from bananastand.thumbnails import is_thumbnail_key, thumbnail_key

log = logging.getLogger(__name__)


def retention_rules(settings: Settings) -> dict[str, int]:
    """Key prefix -> seconds a file under it is kept."""
    return {
        UPLOADS: settings.upload_retention_seconds,
        RESULTS: settings.result_retention_seconds,
    }


async def sweep(storage: Storage, rules: dict[str, int], *, now_ms: int) -> int:
    """Delete every file older than its prefix's retention; returns how many went."""
    deleted = 0
    for prefix, keep_seconds in rules.items():
        cutoff = now_ms - keep_seconds * 1000
        async for info in storage.iterate(prefix):
            if info.modified_ms >= cutoff:
                continue
            current = await storage.stat(info.key)
            if current is None or current.modified_ms >= cutoff:
                continue  # another sweeper took it, or it was written anew
            await storage.delete(info.key)
            deleted += 1
            if prefix == RESULTS and not is_thumbnail_key(info.key):
                # Its preview goes with it, however much younger (made on first view).
                await storage.delete(thumbnail_key(info.key))
    if deleted:
        log.info("expired files deleted", extra={"deleted": deleted})
    return deleted

"""Structured logging: one JSON object per line, carrying the request and task ids.

Ids travel in context variables, so every log line written while serving a request or
running a task names it without each call passing it along. Only entry points call
``configure``; modules just use ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import orjson

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
task_id: ContextVar[str | None] = ContextVar("task_id", default=None)

_CONTEXT = (("request_id", request_id), ("task_id", task_id))
# Record attributes that are not fields of the line; uvicorn's ``color_message`` repeats
# ``msg`` with terminal colour codes.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


@contextmanager
def bind_task(value: str) -> Iterator[None]:
    token = task_id.set(value)
    try:
        yield
    finally:
        task_id.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, variable in _CONTEXT:
            value = variable.get()
            if value is not None:
                entry[name] = value
        # Fields passed with ``extra=`` become fields of the line.
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{name}={var.get()}" for name, var in _CONTEXT if var.get() is not None)
        return f"{line} [{ids}]" if ids else line


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    """``auto``: readable text for a person at a terminal, JSON lines for everything else."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Alembic narrates every start at INFO; its warnings and errors still come through.
    logging.getLogger("alembic").setLevel(logging.WARNING)

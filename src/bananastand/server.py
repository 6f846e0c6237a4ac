"""uvicorn serving our app the way ``bananastand serve`` does (the tests run the same)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from bananastand.app import end_streams


class AppServer(uvicorn.Server):
    """uvicorn serving our app, ending its event streams as shutdown begins (uvicorn
    waits for open connections before the app's own shutdown runs)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        end_streams(self._app)
        await super().shutdown(sockets)


class DrainingServer(AppServer):
    """Exits with status 0 after a graceful SIGTERM/SIGINT drain.

    uvicorn re-raises the caught signal once it has shut down, so the process would look
    killed to its supervisor although it stopped cleanly (``bananastand worker`` exits 0
    too). Errors during shutdown still propagate.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()

"""Wake-ups between processes of one machine on one SQLite file: Unix datagram sockets.

Each process binds a socket in a folder named after the database file and sends each
message to every other socket found there; a socket nobody reads any more (its process
died) refuses the datagram and is removed. No broker and no supervisor needed: the API
and worker processes of ``serve --worker-processes N``, and any ``bananastand worker``
started beside them, hear each other. Datagrams that cannot be sent at once (a receiver
whose buffer is full) are dropped: the receiver's fallback poll finds the change.

The folder lives under the temporary directory, not the data folder, because a socket's
path must fit in ~100 bytes; it is made private to this user. Where Unix sockets are
missing (Windows), processes poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from bananastand.ids import random_token

log = logging.getLogger(__name__)

_MAX_DATAGRAM = 65_536


def supported() -> bool:
    return hasattr(socket, "AF_UNIX") and os.name == "posix"


def folder_for(database_file: Path) -> Path:
    """One folder per database file, the same for every process that opens it."""
    digest = hashlib.sha256(str(database_file.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"bananastand-{digest}"


class SocketBus:
    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)
        self._path: Path | None = None
        self._reading = False

    async def start(
        self, receive: Callable[[bytes | str], None], reconnected: Callable[[], None]
    ) -> None:
        self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._path = self._folder / f"{os.getpid()}-{random_token(6)}.sock"
        self._socket.bind(str(self._path))
        loop = asyncio.get_running_loop()
        loop.add_reader(self._socket.fileno(), self._read, receive)
        self._reading = True

    def _read(self, receive: Callable[[bytes | str], None]) -> None:
        while True:
            try:
                payload = self._socket.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("wake-ups: reading the socket failed: %s", exc)
                return
            receive(payload)

    async def send(self, payload: bytes) -> None:
        try:
            peers = [path for path in self._folder.glob("*.sock") if path != self._path]
        except OSError:
            return  # no folder yet: nobody listens
        for peer in peers:
            try:
                self._socket.sendto(payload, str(peer))
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    peer.unlink()  # its process is gone
            except (BlockingIOError, PermissionError) as exc:
                log.debug("wake-ups: %s not told: %s", peer.name, exc)

    async def aclose(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._reading = False
        self._socket.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)

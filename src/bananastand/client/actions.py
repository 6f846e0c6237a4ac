"""The I/O a flow asks its driver for, and what a flow is.

Each operation of the client (``get``, ``wait``, ``generate``, ...) is a *flow*: a
generator that yields these actions - ``Send(request)`` or ``Sleep(seconds)``, and for
event streams ``Open(request)``, ``Read(response)``, ``ReadChunk(response)``,
``Close(response)`` - and is sent back the ``httpx.Response`` or bytes (or has a
``TransportError`` thrown in). Request building, envelope parsing, server-sent event
parsing, error mapping, the retry policy and poll pacing all live in the flows, so
``Client`` and ``AsyncClient`` (``client.py``) are only two small driver loops that
perform these actions - the "sans-I/O" pattern of h11/httpcore, not two copies of the
logic.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import httpx

T = TypeVar("T")


@dataclass(frozen=True)
class Send:
    request: httpx.Request


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Open:
    """Send ``request`` and return the response as soon as its headers are in, its body
    unread; ``read_timeout`` replaces the HTTP client's read timeout for this response."""

    request: httpx.Request
    read_timeout: float


@dataclass(frozen=True)
class Read:
    """Read the rest of an opened response's body (and free its connection)."""

    response: httpx.Response


@dataclass(frozen=True)
class ReadChunk:
    """The next piece of an opened response's body, as it arrives; ``b""`` at its end."""

    response: httpx.Response


@dataclass(frozen=True)
class Close:
    """Close an opened response, read or not. (Drivers also close any response a flow
    leaves open, whatever way it ends.)"""

    response: httpx.Response


Action: TypeAlias = Send | Sleep | Open | Read | ReadChunk | Close
#: A flow yields actions, is sent responses (or ``None`` after a sleep), returns ``T``.
Flow: TypeAlias = Generator[Action, Any, T]


def opening(action: Open, timeout: httpx.Timeout) -> httpx.Request:
    """``action``'s request with the client's ``timeout`` but the action's read timeout."""
    request = action.request
    request.extensions = {
        **request.extensions,
        "timeout": {**timeout.as_dict(), "read": action.read_timeout},
    }
    return request

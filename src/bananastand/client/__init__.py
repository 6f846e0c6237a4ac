"""The client side of bananastand; importable without the server's dependencies.

from bananastand.client import Client
with Client() as client:               # BANANASTAND_BASE_URL, BANANASTAND_API_KEY
    result = client.generate("a banana in sunglasses", aspect_ratio="16:9")
    result.save("out/")
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from bananastand.client.webhooks import CallbackVerificationError, verify_callback

if TYPE_CHECKING:
    from bananastand.client.async_client import AsyncClient
    from bananastand.client.client import Client
    from bananastand.client.errors import (
        ApiError,
        AuthenticationError,
        BananastandError,
        FeatureDisabledError,
        ForbiddenError,
        GenerationFailedError,
        GoneError,
        InsufficientCreditsError,
        MaintenanceError,
        NotFoundError,
        RateLimitError,
        ServerError,
        TimeoutError,
        TransportError,
        ValidationError,
    )
    from bananastand.client.models import Image, Result, Task, TaskState, UploadedFile
    from bananastand.client.pacing import PollSchedule, RetryPolicy

#: The SDK needs httpx and pydantic; a callback receiver needs only the standard library,
#: so the SDK's names load on first use and ``verify_callback`` imports alone.
_LAZY = {
    "PollSchedule": "pacing",
    "RetryPolicy": "pacing",
    "AsyncClient": "async_client",
    "Client": "client",
    "Image": "models",
    "Result": "models",
    "Task": "models",
    "TaskState": "models",
    "UploadedFile": "models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"bananastand.client.{_LAZY[name]}"), name)
    if name in __all__:
        return getattr(import_module("bananastand.client.errors"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ApiError",
    "AsyncClient",
    "AuthenticationError",
    "BananastandError",
    "CallbackVerificationError",
    "Client",
    "FeatureDisabledError",
    "ForbiddenError",
    "GenerationFailedError",
    "GoneError",
    "Image",
    "InsufficientCreditsError",
    "MaintenanceError",
    "NotFoundError",
    "PollSchedule",
    "RateLimitError",
    "Result",
    "RetryPolicy",
    "ServerError",
    "Task",
    "TaskState",
    "TimeoutError",
    "TransportError",
    "UploadedFile",
    "ValidationError",
    "verify_callback",
]

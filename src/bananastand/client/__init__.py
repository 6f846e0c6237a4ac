"""The client side of bananastand; importable without the server's dependencies.

from bananastand.client import Client
with Client() as client:               # BANANASTAND_BASE_URL, BANANASTAND_API_KEY
    result = client.generate("a banana in sunglasses", aspect_ratio="16:9")
    result.save("out/")
"""

from bananastand.client._core import PollSchedule, RetryPolicy
from bananastand.client.client import AsyncClient, Client
from bananastand.client.errors import (
    ApiError,
    AuthenticationError,
    BananastandError,
    FeatureDisabledError,
    GenerationFailedError,
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
from bananastand.client.webhooks import CallbackVerificationError, verify_callback

__all__ = [
    "ApiError",
    "AsyncClient",
    "AuthenticationError",
    "BananastandError",
    "CallbackVerificationError",
    "Client",
    "FeatureDisabledError",
    "GenerationFailedError",
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

"""Wire vocabulary of the hosted jobs API: the values clients send and read.

Only plain enums and constants live here, so the SDK, the server and the providers can
share them without importing each other.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticUseDefault


class TaskState(StrEnum):
    WAITING = "waiting"  # accepted, not claimed by a worker
    QUEUING = "queuing"  # claimed: fetching inputs or waiting for an upstream slot
    GENERATING = "generating"  # the upstream call is in flight
    SUCCESS = "success"
    FAIL = "fail"

    @property
    def is_final(self) -> bool:
        return self in (TaskState.SUCCESS, TaskState.FAIL)


class AspectRatio(StrEnum):
    R1_1 = "1:1"
    R2_3 = "2:3"
    R3_2 = "3:2"
    R3_4 = "3:4"
    R4_3 = "4:3"
    R4_5 = "4:5"
    R5_4 = "5:4"
    R9_16 = "9:16"
    R16_9 = "16:9"
    R21_9 = "21:9"
    # Nano Banana 2 (Gemini 3.1 Flash Image) only: very tall and very wide.
    R1_4 = "1:4"
    R4_1 = "4:1"
    R1_8 = "1:8"
    R8_1 = "8:1"
    AUTO = "auto"


class Resolution(StrEnum):
    R1K = "1K"
    R2K = "2K"
    R4K = "4K"

    @property
    def scale(self) -> int:
        """Google doubles both sides at 2K and quadruples them at 4K."""
        return {"1K": 1, "2K": 2, "4K": 4}[self.value]


class OutputFormat(StrEnum):
    PNG = "png"
    JPG = "jpg"
    WEBP = "webp"

    @property
    def mime_type(self) -> str:
        return {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}[self.value]


#: What Nano Banana Pro (and the hosted API) accepts, and what ``auto`` chooses among.
STANDARD_ASPECT_RATIOS: tuple[AspectRatio, ...] = (
    AspectRatio.R1_1,
    AspectRatio.R2_3,
    AspectRatio.R3_2,
    AspectRatio.R3_4,
    AspectRatio.R4_3,
    AspectRatio.R4_5,
    AspectRatio.R5_4,
    AspectRatio.R9_16,
    AspectRatio.R16_9,
    AspectRatio.R21_9,
)

#: Output pixel sizes at 1K, from Google's table for Nano Banana Pro. Google publishes no
#: table for Nano Banana 2's extreme ratios; theirs are about one megapixel in multiples of
#: 16 like the rest (what the sandbox renders; the real model may differ by a few pixels).
SIZES_1K: dict[AspectRatio, tuple[int, int]] = {
    AspectRatio.R1_1: (1024, 1024),
    AspectRatio.R2_3: (848, 1264),
    AspectRatio.R3_2: (1264, 848),
    AspectRatio.R3_4: (896, 1200),
    AspectRatio.R4_3: (1200, 896),
    AspectRatio.R4_5: (928, 1152),
    AspectRatio.R5_4: (1152, 928),
    AspectRatio.R9_16: (768, 1376),
    AspectRatio.R16_9: (1376, 768),
    AspectRatio.R21_9: (1584, 672),
    AspectRatio.R1_4: (512, 2048),
    AspectRatio.R4_1: (2048, 512),
    AspectRatio.R1_8: (352, 2816),
    AspectRatio.R8_1: (2816, 352),
}


def output_size(aspect_ratio: AspectRatio, resolution: Resolution) -> tuple[int, int]:
    """Pixel size Nano Banana Pro returns; ``auto`` must be resolved by the caller first."""
    width, height = SIZES_1K[aspect_ratio]
    return width * resolution.scale, height * resolution.scale


# failCode strings the store writes itself (providers carry theirs on errors.TaskFailure).
FAIL_INPUT = "400"
FAIL_INTERNAL = "500"
CANCELED_MSG = "canceled"


# -- Requests -------------------------------------------------------------------------------
# Validation is strict where the seed is (types, ranges, enums) and lenient where real
# clients are known to stray: ``jpeg`` for ``jpg``, upper/lower case, ``null`` for an
# optional field, ``""`` for no callBackUrl, unknown extra fields (ignored).

# The widest any model allows; each model's own limits are in its registry entry.
MAX_PROMPT_CHARS = 20_000
MAX_IMAGE_INPUTS = 14
MAX_URL_CHARS = 2048
MAX_MODEL_CHARS = 64


def _drop_empty(value: Any) -> Any:
    """``null`` for an optional field means "use the default"."""
    if value is None:
        raise PydanticUseDefault
    return value


def _blank_is_none(value: Any) -> Any:
    """Many clients send ``"callBackUrl": ""`` when they want no callback."""
    return None if value == "" else value


#: Spaces, and the control characters (NUL, ESC, DEL, C1) that break every fetch and
#: callback delivery of the task later on.
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def check_http_url(value: str) -> str:
    """An absolute http(s) URI with a host, as the seed's ``format: uri`` requires."""
    if len(value) > MAX_URL_CHARS:
        raise ValueError(f"must be at most {MAX_URL_CHARS} characters")
    if _SPACE_OR_CONTROL.search(value):
        raise ValueError("must be a URI without spaces or control characters")
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except ValueError as exc:
        raise ValueError(f"must be a valid URI ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URI")
    if not parts.hostname or not port_ok:
        raise ValueError("must be an absolute URI with a host")
    return value


HttpUri = Annotated[str, AfterValidator(check_http_url)]


class TaskInput(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
    image_input: Annotated[
        list[HttpUri], BeforeValidator(_drop_empty), Field(max_length=MAX_IMAGE_INPUTS)
    ] = []
    aspect_ratio: AspectRatio = AspectRatio.R1_1
    resolution: Resolution = Resolution.R1K
    output_format: OutputFormat = OutputFormat.PNG

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("aspect_ratio", "resolution", "output_format", mode="before")
    @classmethod
    def _normalise_enum(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            raise PydanticUseDefault
        if not isinstance(value, str):
            return value  # let the enum reject it with the usual message
        return normalise_choice(info.field_name or "", value)


def normalise_choice(field: str, value: str) -> str:
    """A choice as read whatever its case and spacing: `` 2k`` is ``2K``, ``JPEG`` ``jpg``."""
    if field == "resolution":
        return value.strip().upper()
    value = value.strip().lower()
    return "jpg" if field == "output_format" and value == "jpeg" else value


class Lane(StrEnum):
    """When a task may run: ``now``, or ``batch`` (an extension field of ours: through
    the upstream's Batch API, within a day, at the batch price)."""

    NOW = "now"
    BATCH = "batch"


class CreateTaskRequest(BaseModel):
    """The createTask body. ``model`` is checked against the registry by the server."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    model: Annotated[str, Field(min_length=1, max_length=MAX_MODEL_CHARS)]
    callback_url: Annotated[HttpUri | None, BeforeValidator(_blank_is_none)] = Field(
        default=None, alias="callBackUrl"
    )
    input: TaskInput
    lane: Annotated[Lane, BeforeValidator(_drop_empty)] = Lane.NOW


def describe_validation_error(error: PydanticValidationError) -> str:
    """``input.prompt: String should have at most 10000 characters`` - field, then rule."""
    first = error.errors(include_url=False)[0]
    location = ".".join(str(part) for part in first["loc"]) or "body"
    message = first["msg"].removeprefix("Value error, ")
    return f"{location}: {message}"


# -- Answers (for the OpenAPI docs and for clients that want typed records) -----------------


class TaskIdData(BaseModel):
    taskId: str


class TaskRecord(BaseModel):
    """``data`` of recordInfo and of callbacks. ``param``/``resultJson`` are JSON *strings*."""

    taskId: str
    model: str
    state: TaskState
    param: str
    resultJson: str = ""
    failCode: str = ""
    failMsg: str = ""
    costTime: int | None = None
    createTime: int
    updateTime: int
    completeTime: int | None = None
    creditsConsumed: float = 0


class TaskListItem(TaskRecord):
    """A record as the list shows it, with a link to a small WebP preview of its first
    result (at most 256 px on the long side; null until the task has succeeded), and the
    named upstream that served it (``sandbox`` for test keys; null until one took it)."""

    thumbnailUrl: str | None = None
    upstream: str | None = None


class TaskPage(BaseModel):
    items: list[TaskListItem]
    nextCursor: str | None = None


class Envelope(BaseModel):
    """Every JSON answer, errors included, comes with HTTP 200; ``code`` carries the outcome.

    ``message`` repeats ``msg`` for clients written against older docs.
    """

    code: int
    msg: str
    message: str
    data: Any = None


class CreateTaskAnswer(Envelope):
    data: TaskIdData | None = None


class RecordInfoAnswer(Envelope):
    data: TaskRecord | None = None


class TaskPageAnswer(Envelope):
    data: TaskPage | None = None


#: The seed's example request, shown in the API docs.
CREATE_TASK_EXAMPLE: dict[str, Any] = {
    "model": "nano-banana-pro",
    "callBackUrl": "https://your-domain.com/api/callback",
    "input": {
        "prompt": "Comic poster: cool banana hero in shades leaps from sci-fi pad.",
        "image_input": [],
        "aspect_ratio": "1:1",
        "resolution": "1K",
        "output_format": "png",
    },
}

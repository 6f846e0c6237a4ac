"""What Google's answers mean for a task: an error status, a refusal, or the image (the
table of ``bananastand.providers.google`` says which failCode each becomes)."""

from __future__ import annotations

from google.genai import errors as genai_errors
from google.genai import types

from bananastand.errors import InputError, SafetyBlocked, TaskFailure, UpstreamError

#: finishReason values that mean "no image, on purpose" (the request is 200 OK).
_BLOCKING_FINISH = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "IMAGE_OTHER",
        "NO_IMAGE",
    }
)


def api_failure(exc: genai_errors.APIError) -> TaskFailure:
    """A key Google refuses is no fault of the caller's: the task goes to the next upstream
    and this one's breaker opens at once (every task would fail the same way)."""
    what = f"{exc.code} {exc.status or ''}".strip()
    message = exc.message or "no message"
    status = str(exc.code)
    if exc.code == 400 and _refused_key(exc):
        return UpstreamError(
            f"Google refused this server's API key ({what}): {message}",
            upstream_status=status,
            trip=True,
        )
    if exc.code == 400:
        return InputError(
            f"Google rejected the request ({what}): {message}", upstream_status=status
        )
    if exc.code == 429:
        return UpstreamError(
            f"Google is rate limiting us ({what}): {message}", upstream_status=status
        )
    if exc.code in (401, 403):
        return UpstreamError(
            f"Google refused this server's credentials ({what}): {message}",
            upstream_status=status,
            trip=True,
        )
    return UpstreamError(f"Google answered {what}: {message}", upstream_status=status)


def _refused_key(exc: genai_errors.APIError) -> bool:
    """Google answers a wrong API key 400 INVALID_ARGUMENT, with an ``ErrorInfo`` detail
    whose reason is ``API_KEY_INVALID``."""
    error = exc.details.get("error") if isinstance(exc.details, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    listed = details if isinstance(details, list) else []
    return any(
        isinstance(detail, dict) and detail.get("reason") == "API_KEY_INVALID" for detail in listed
    )


def pick_image(response: types.GenerateContentResponse) -> tuple[bytes, str]:
    """The last image part that is not a thought (drafts come first), or the reason why
    there is none."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        reason = _enum_name(feedback.block_reason)
        detail = f": {feedback.block_reason_message}" if feedback.block_reason_message else ""
        raise SafetyBlocked(f"the prompt was blocked by Google's filters ({reason}){detail}")
    candidates = response.candidates or []
    if not candidates:
        raise UpstreamError("Google answered with no candidates and no reason")
    candidate = candidates[0]
    finish = _enum_name(candidate.finish_reason) if candidate.finish_reason else ""
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    image: tuple[bytes, str] | None = None
    texts: list[str] = []
    for part in parts:
        if part.thought:
            continue
        if part.inline_data is not None and part.inline_data.data:
            image = (part.inline_data.data, part.inline_data.mime_type or "image/png")
        elif part.text:
            texts.append(part.text.strip())
    said = " ".join(texts)[:300]
    if finish in _BLOCKING_FINISH:
        detail = candidate.finish_message or said
        raise SafetyBlocked(
            f"Google returned no image (finishReason {finish})" + (f": {detail}" if detail else "")
        )
    if image is None:
        raise UpstreamError(
            f"Google returned no image (finishReason {finish or 'unknown'})"
            + (f"; the model said: {said}" if said else "")
        )
    return image


def _enum_name(value: object) -> str:
    return str(getattr(value, "value", value))

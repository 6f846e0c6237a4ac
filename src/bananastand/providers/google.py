"""Nano Banana on Google, through the field's own client (the ``google-genai`` SDK).

One provider class serves both of Google's front doors: the Gemini API (an API key) and
Vertex AI (a project, a location and Google credentials). They take the same request and
differ in their limits on inline images, which is all this module needs to know of them.

Every upstream outcome becomes one clear task outcome:

==============================================  ==================  ========
upstream                                        raises              failCode
==============================================  ==================  ========
429, 500, 503, 504, timeouts, dropped links     retried, then       500/504
                                                ``UpstreamError``
                                                or ``UpstreamTimeout``
400 (INVALID_ARGUMENT, ...)                     ``InputError``      400
400 API_KEY_INVALID, 401, 403 (our key)         ``UpstreamError``   500
                                                (opens the breaker)
``promptFeedback.blockReason``, a safety
``finishReason`` (IMAGE_SAFETY, NO_IMAGE, ...)  ``SafetyBlocked``   403
other 4xx/5xx (unknown model, ...)              ``UpstreamError``   500
==============================================  ==================  ========

The SDK retries nothing by default and is left that way: retries happen here, with
jittered exponential backoff bounded by attempts and by a time budget, each attempt
paced by the provider's `UpstreamLimiter`. The Gemini API may have a pool of keys
(`bananastand.providers.key_pool`): a key answered 429 rests and the next one takes the
call at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from bananastand import imaging
from bananastand.contract import AspectRatio
from bananastand.errors import ConfigurationError, InputError, UpstreamError, UpstreamTimeout
from bananastand.providers.base import Attempt, GeneratedImage, GenerationRequest
from bananastand.providers.google_answers import api_failure, pick_image
from bananastand.providers.key_pool import KeyPool, PooledKey, retry_delay
from bananastand.providers.limits import UpstreamLimiter
from bananastand.settings import ModelSpec

__all__ = [
    "GEMINI_LIMITS",
    "VERTEX_LIMITS",
    "GoogleProvider",
    "InlineLimits",
    "UpstreamRetryPolicy",
]

log = logging.getLogger(__name__)

_MB = 1024 * 1024

#: Statuses worth trying again: overload and transient server trouble.
_TRANSIENT = frozenset({429, 500, 503, 504})


@dataclass(frozen=True, slots=True)
class InlineLimits:
    """What one request may carry as inline images, in raw (not base64) bytes."""

    per_image: int | None
    per_request: int | None


#: The Gemini API takes about 20 MB of request, base64 included: 3/4 of it is image bytes,
#: less room for the prompt.
GEMINI_LIMITS = InlineLimits(per_image=None, per_request=14 * _MB)
#: Vertex AI takes 7 MB per inline image.
VERTEX_LIMITS = InlineLimits(per_image=7 * _MB, per_request=None)


@dataclass(frozen=True, slots=True)
class UpstreamRetryPolicy:
    """How a worker retries one generation call to Google (the ``upstream_*`` settings).

    Not the client SDK's ``RetryPolicy``, which paces calls to our own API and honours its
    ``Retry-After``: here each attempt has a time limit of its own (a 4K run can take
    minutes), and only the SDK's transient errors (429, 500, 503, 504, lost connections,
    timeouts) are retried, with full jitter and no cap but the budget.
    """

    timeout_s: float = 300.0  # one attempt
    max_attempts: int = 5
    budget_s: float = 120.0  # most time spent sleeping between attempts
    backoff_s: float = 2.0  # first delay; doubled each retry, full jitter

    def delay(self, retry: int) -> float:
        return random.uniform(0, self.backoff_s * 2 ** (retry - 1))  # noqa: S311 (jitter)


@dataclass(frozen=True, slots=True)
class KeyRest:
    """How long a key answered 429 is skipped when Google's answer does not say: the
    cool-down in a pool of several keys (the others take the calls meanwhile); a key
    alone waits out the usual backoff instead."""

    cooldown_s: float = 60.0


class GoogleProvider:
    """Generates with Gemini image models; ``name`` is the upstream's (``gemini`` or
    ``vertex`` without a config file's [upstreams])."""

    def __init__(
        self,
        name: str,
        keys: KeyPool[genai.Client],
        models: Mapping[str, ModelSpec],
        *,
        limits: InlineLimits,
        retry: UpstreamRetryPolicy,
        limiter: UpstreamLimiter,
        key_rest: KeyRest = KeyRest(),
        upstream_model: str = "",
    ) -> None:
        """``upstream_model``: the model id sent for every request (empty: the model's
        ``upstream_id``)."""
        self.name = name
        self.limiter = limiter
        self._keys = keys
        self._models = dict(models)
        self._limits = limits
        self._retry = retry
        self._key_rest = key_rest
        self._upstream_model = upstream_model

    @classmethod
    def gemini(
        cls,
        api_keys: str | Sequence[str],
        models: Mapping[str, ModelSpec],
        *,
        base_url: str = "",
        retry: UpstreamRetryPolicy,
        limiter: UpstreamLimiter,
        name: str = "gemini",
        key_limiters: Sequence[UpstreamLimiter] = (),
        key_rest: KeyRest = KeyRest(),
        upstream_model: str = "",
    ) -> GoogleProvider:
        """``key_limiters``: one per key of a pool of several (none: the keys are paced by
        ``limiter`` alone)."""
        secrets = [api_keys] if isinstance(api_keys, str) else list(api_keys)
        if not all(secrets) or not secrets:
            raise ConfigurationError("the Gemini API needs GEMINI_API_KEY or GOOGLE_API_KEY")
        options = _http_options(base_url, retry)
        pool = KeyPool(
            [
                PooledKey(
                    index,
                    genai.Client(api_key=secret, http_options=options),
                    key_limiters[index] if key_limiters else None,
                )
                for index, secret in enumerate(secrets)
            ]
        )
        return cls(
            name,
            pool,
            models,
            limits=GEMINI_LIMITS,
            retry=retry,
            limiter=limiter,
            key_rest=key_rest,
            upstream_model=upstream_model,
        )

    @classmethod
    def vertex(
        cls,
        project: str,
        location: str,
        models: Mapping[str, ModelSpec],
        *,
        retry: UpstreamRetryPolicy,
        limiter: UpstreamLimiter,
        name: str = "vertex",
        base_url: str = "",
        upstream_model: str = "",
    ) -> GoogleProvider:
        if not project:
            raise ConfigurationError("Vertex AI needs GOOGLE_CLOUD_PROJECT")
        try:
            client = genai.Client(
                vertexai=True,
                project=project,
                location=location or "global",
                http_options=_http_options(base_url, retry),
            )
        except Exception as exc:  # the SDK raises plain errors for missing credentials
            raise ConfigurationError(f"Vertex AI client could not start: {exc}") from exc
        return cls(
            name,
            KeyPool([PooledKey(0, client)]),
            models,
            limits=VERTEX_LIMITS,
            retry=retry,
            limiter=limiter,
            upstream_model=upstream_model,
        )

    async def aclose(self) -> None:
        for key in self._keys.keys:
            await key.client.aio.aclose()
        await self._keys.aclose()
        await self.limiter.aclose()

    async def generate(self, request: GenerationRequest, attempt: Attempt) -> GeneratedImage:
        spec = self._models.get(request.model)
        if spec is None:
            raise InputError(f"model {request.model!r} is not configured on this server")
        images = await asyncio.to_thread(
            imaging.fit_inputs,
            [(image.data, image.mime_type) for image in request.images],
            per_image=self._limits.per_image,
            per_request=self._limits.per_request,
        )
        contents: list[Any] = [request.prompt]
        contents += [types.Part.from_bytes(data=data, mime_type=mime) for data, mime in images]
        image_config = types.ImageConfig(
            aspect_ratio=None
            if request.aspect_ratio is AspectRatio.AUTO
            else request.aspect_ratio.value,
            image_size=request.resolution.value.upper() if spec.sends_image_size else None,
        )
        config = types.GenerateContentConfig(
            response_modalities=["TEXT", "IMAGE"], image_config=image_config
        )
        await attempt.started()
        started = time.monotonic()
        upstream_model = self._upstream_model or spec.upstream_id
        response, calls = await self._call(upstream_model, contents, config)
        latency_ms = round((time.monotonic() - started) * 1000)
        data, mime_type = pick_image(response)
        usage: dict[str, int | float | str] = {
            "provider": self.name,
            "upstream_model": upstream_model,
            "upstream_ms": latency_ms,
            "attempts": calls.attempts,
        }
        if calls.abandoned:
            usage["abandoned_calls"] = calls.abandoned
        usage.update(token_usage(response))
        return GeneratedImage(data=data, mime_type=mime_type, usage=usage)

    async def _call(
        self, model: str, contents: list[Any], config: types.GenerateContentConfig
    ) -> tuple[types.GenerateContentResponse, _Calls]:
        """One response, retried on transient trouble; raises a ``TaskFailure``.

        A key answered 429 rests and the next free key is called at once; when every key
        rests, the call waits for the first to wake, within the retry budget.
        """
        retry = self._retry
        calls = _Calls()
        slept = 0.0
        while True:
            key = self._keys.next_key()
            if key is None:
                wait = self._keys.seconds_until_one_wakes()
                if calls.attempts >= retry.max_attempts or slept + wait > retry.budget_s:
                    raise self._exhausted(calls, wait)
                slept += wait
                await asyncio.sleep(wait)
                continue
            calls.attempts += 1
            if calls.attempts > 1:
                await self.limiter.pace()
            if key.limiter is not None:
                await key.limiter.pace()
            rested = False
            try:
                async with asyncio.timeout(retry.timeout_s):
                    response = await key.client.aio.models.generate_content(
                        model=model, contents=contents, config=config
                    )
                return response, calls
            except genai_errors.APIError as exc:
                failure = api_failure(exc)
                transient = exc.code in _TRANSIENT
                if exc.code == 429:
                    rested = self._rest(key, exc)
            except (TimeoutError, httpx.TimeoutException):
                calls.abandoned += 1  # Google may still run (and bill) it
                failure = UpstreamTimeout(f"Google did not answer within {retry.timeout_s:g} s")
                transient = True
            except (aiohttp.ClientError, httpx.TransportError) as exc:
                failure = UpstreamError(
                    f"the connection to Google failed ({type(exc).__name__})",
                    upstream_status="connection",
                )
                transient = True
            # A rested key's turn comes back by itself; another key may go at once.
            delay = 0.0 if rested else retry.delay(calls.attempts)
            if (
                not transient
                or calls.attempts >= retry.max_attempts
                or slept + delay > retry.budget_s
            ):
                if transient:
                    failure = type(failure)(
                        f"{failure.message}; gave up after {calls.attempts} attempt(s)",
                        upstream_status=failure.upstream_status,
                        abandoned_calls=calls.abandoned,
                    )
                raise failure
            log.warning(
                "upstream attempt failed; retrying",
                extra={
                    "attempt": calls.attempts,
                    "delay_s": round(delay, 2),
                    "reason": failure.message,
                    "key": key.index,
                },
            )
            slept += delay
            if delay:
                await asyncio.sleep(delay)

    def _rest(self, key: PooledKey[genai.Client], exc: genai_errors.APIError) -> bool:
        """Skip a key Google answered 429 for as long as it says, else the cool-down
        (for a key alone: the usual backoff, so not rested); whether it rests."""
        told = retry_delay(exc.details if isinstance(exc.details, Mapping) else None)
        if told is None and len(self._keys) == 1:
            return False
        seconds = told if told is not None else self._key_rest.cooldown_s
        self._keys.rest(key, seconds)
        log.warning(
            "an API key is rate limited; resting it",
            extra={"upstream": self.name, "key": key.index, "rest_s": seconds},
        )
        return True

    def _exhausted(self, calls: _Calls, wait: float) -> UpstreamError:
        return UpstreamError(
            f"every API key of {self.name} is rate limited for {wait:.0f} s more "
            f"(429 RESOURCE_EXHAUSTED); gave up after {calls.attempts} attempt(s)",
            upstream_status="429",
            abandoned_calls=calls.abandoned,
        )


@dataclass(slots=True)
class _Calls:
    """What one task's calls to Google came to: calls made, and those given up on."""

    attempts: int = 0
    abandoned: int = 0


def token_usage(response: types.GenerateContentResponse) -> dict[str, int]:
    """The tokens an answer reports, as a task's usage keeps them."""
    meta = response.usage_metadata
    if meta is None:
        return {}
    counts = {
        "prompt_tokens": meta.prompt_token_count,
        "output_tokens": meta.candidates_token_count,
        "thought_tokens": meta.thoughts_token_count,
        "total_tokens": meta.total_token_count,
    }
    return {key: value for key, value in counts.items() if value is not None}


def _http_options(base_url: str, retry: UpstreamRetryPolicy) -> types.HttpOptions:
    # The SDK's timeout is in milliseconds; ours also wraps each call (asyncio.timeout).
    return types.HttpOptions(
        base_url=base_url or None,
        timeout=int(retry.timeout_s * 1000),
    )

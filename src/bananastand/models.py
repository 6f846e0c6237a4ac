"""Per-model input rules: each model name in the registry takes its own fields.

The hosted API's models differ in what they accept (``google/nano-banana`` calls the
aspect ratio ``image_size`` and takes no images; ``nano-banana-2`` defaults to ``auto``
and ``jpg``). A createTask body is first put into our one shape (`spec_input`), so that
everything after validation (the stored input, the worker, the providers) knows a single
vocabulary, then checked against the model's limits (`check_model_rules`).
"""

from __future__ import annotations

from typing import Any

from bananastand.contract import CreateTaskRequest
from bananastand.errors import ValidationError
from bananastand.settings import ModelSpec


def spec_input(spec: ModelSpec, raw: dict[str, Any]) -> dict[str, Any]:
    """The client's ``input`` in our field names, with the model's own defaults filled in
    for fields left out (or null). Our own names are accepted too; they win."""
    shaped = dict(raw)
    for theirs, ours in spec.input_aliases.items():
        if theirs in shaped:
            value = shaped.pop(theirs)
            shaped.setdefault(ours, value)
    for field, value in spec.defaults.items():
        if shaped.get(field) is None:
            shaped[field] = value
    return shaped


def in_clients_words(spec: ModelSpec, raw: Any, message: str) -> str:
    """A refusal names the field as the client sent it (``input.image_size``, not our
    ``input.aspect_ratio``), or it would point at a field they never wrote."""
    if not isinstance(raw, dict):
        return message
    for theirs, ours in spec.input_aliases.items():
        if theirs in raw and ours not in raw and message.startswith(f"input.{ours}"):
            return f"input.{theirs}" + message[len(f"input.{ours}") :]
    return message


def check_model_rules(request: CreateTaskRequest, spec: ModelSpec) -> None:
    """422 naming the field when the request asks for what this model cannot do."""
    model = request.model
    given = request.input
    if given.resolution not in spec.resolutions:
        allowed = ", ".join(r.value for r in spec.resolutions)
        raise ValidationError(f"input.resolution: {model} supports {allowed}")
    if given.aspect_ratio not in spec.aspect_ratios:
        allowed = ", ".join(r.value for r in spec.aspect_ratios)
        raise ValidationError(f"input.aspect_ratio: {model} supports {allowed}")
    if given.output_format not in spec.output_formats:
        allowed = ", ".join(f.value for f in spec.output_formats)
        raise ValidationError(f"input.output_format: {model} supports {allowed}")
    if len(given.image_input) > spec.max_images:
        limit = f"at most {spec.max_images} images" if spec.max_images else "no images"
        raise ValidationError(f"input.image_input: {model} takes {limit}")
    if len(given.prompt) > spec.max_prompt_chars:
        raise ValidationError(
            f"input.prompt: {model} takes at most {spec.max_prompt_chars} characters"
        )

"""Per-model input rules: each model name in the registry takes its own fields.

The hosted API's models differ in what they accept (``google/nano-banana`` calls the
aspect ratio ``image_size`` and takes no images; ``nano-banana-2`` defaults to ``auto``
and ``jpg``). A createTask body is first put into our one shape (`spec_input`), so that
everything after validation (the stored input, the worker, the providers) knows a single
vocabulary, and checked against the model's limits (`check_model_rules`) before the
general validation, so that a refusal states the limit of the model the caller named.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bananastand.contract import (
    AspectRatio,
    OutputFormat,
    Resolution,
    TaskInput,
    normalise_choice,
)
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


def check_model_rules(model: str, spec: ModelSpec, given: Mapping[str, Any]) -> None:
    """422 naming the field when the input (as `spec_input` shaped it) asks for what this
    model cannot do.

    Runs before the general validation, whose limits are the widest any model allows:
    ``nano-banana-pro`` must say it takes 8 images, not 14, and list its own aspect ratios.
    Values of the wrong type are left to that validation; a field left out is judged by
    the default it will get.
    """
    choices: dict[str, list[Resolution] | list[AspectRatio] | list[OutputFormat]] = {
        "resolution": spec.resolutions,
        "aspect_ratio": spec.aspect_ratios,
        "output_format": spec.output_formats,
    }
    for field, allowed in choices.items():
        value = given.get(field)
        if value is None:
            value = TaskInput.model_fields[field].default
        if isinstance(value, str) and normalise_choice(field, value) not in allowed:
            listed = ", ".join(choice.value for choice in allowed)
            raise ValidationError(f"input.{field}: {model} supports {listed}")
    images = given.get("image_input")
    if isinstance(images, list) and len(images) > spec.max_images:
        limit = f"at most {spec.max_images} images" if spec.max_images else "no images"
        raise ValidationError(f"input.image_input: {model} takes {limit}")
    prompt = given.get("prompt")
    if isinstance(prompt, str) and len(prompt) > spec.max_prompt_chars:
        raise ValidationError(
            f"input.prompt: {model} takes at most {spec.max_prompt_chars} characters"
        )

"""What a key may ask for (``GET /api/v1/models``): the models it may use now, each with
its limits, choices, output sizes and what it costs this key.

A client (the web page) builds its form from this instead of a copy of our settings, so
it offers exactly what createTask accepts: the same per-model rules (``models.py``), the
same switches (``ops.py``), the same prices (``billing.py``).
"""

from __future__ import annotations

from pydantic import BaseModel

from bananastand.billing import Billing
from bananastand.contract import (
    MAX_IMAGE_INPUTS,
    MAX_PROMPT_CHARS,
    AspectRatio,
    Lane,
    Resolution,
    TaskInput,
    normalise_choice,
    output_size,
)
from bananastand.ops import Switches
from bananastand.providers.registry import ProviderChoice
from bananastand.providers.sandbox import MAGIC_PROMPTS
from bananastand.records import ApiKey
from bananastand.settings import ModelSpec, Settings

#: The input fields with a choice of values, each with a default when left out.
_CHOICES = ("aspect_ratio", "resolution", "output_format")


class PixelSize(BaseModel):
    width: int
    height: int


class ModelOffer(BaseModel):
    """One model as a key may use it. Field values are our input's (``input.*``) names
    and values; a model's own aliases (``image_size``) are accepted by createTask too."""

    model: str
    maxPromptLength: int
    #: 0: the model takes no ``image_input`` (text to image only).
    maxImages: int
    aspectRatios: list[str]
    resolutions: list[str]
    outputFormats: list[str]
    #: What createTask uses for a field left out: ``aspect_ratio``, ``resolution``,
    #: ``output_format``.
    defaults: dict[str, str]
    #: resolution -> aspect ratio -> the output's pixel size; ``auto`` is absent (its
    #: size follows the first input image).
    outputSizes: dict[str, dict[str, PixelSize]]
    #: resolution -> credits a task costs this key.
    prices: dict[str, int]
    #: resolution -> credits a task on the batch lane (``"lane": "batch"``) costs this key.
    batchPrices: dict[str, int]


class MagicPrompt(BaseModel):
    tag: str
    effect: str


class SandboxInfo(BaseModel):
    """Test keys run on the sandbox: these tags in a prompt force an outcome."""

    magicPrompts: list[MagicPrompt]


class ModelCatalog(BaseModel):
    models: list[ModelOffer]
    #: Only for test keys; null for live keys.
    sandbox: SandboxInfo | None = None


class Catalog:
    def __init__(
        self,
        settings: Settings,
        *,
        billing: Billing,
        switches: Switches,
        provider_choice: ProviderChoice,
    ) -> None:
        self._models = settings.models
        self._billing = billing
        self._switches = switches
        self._provider_choice = provider_choice

    async def for_key(self, key: ApiKey) -> ModelCatalog:
        """The models ``key`` may use now, as the settings list them: not those switched
        off for everyone or for its account, and none for a live key that has no
        upstream routed for it (createTask would answer 505).

        Prices are what createTask charges this key (``Billing.price``): a test key is
        never charged, so its prices are 0, as are everyone's with billing off.
        """
        switches = await self._switches.current()
        offers = [
            self._offer(name, spec, key)
            for name, spec in self._models.items()
            if self._provider_choice.serves(name, is_test=key.is_test)
            and switches.allows(name, key.account_id)
        ]
        sandbox = None
        if key.is_test:
            sandbox = SandboxInfo(
                magicPrompts=[MagicPrompt(tag=tag, effect=effect) for tag, effect in MAGIC_PROMPTS]
            )
        return ModelCatalog(models=offers, sandbox=sandbox)

    def _offer(self, name: str, spec: ModelSpec, key: ApiKey) -> ModelOffer:
        ratios = [ratio for ratio in spec.aspect_ratios if ratio is not AspectRatio.AUTO]
        sizes = {
            resolution.value: {ratio.value: _size(ratio, resolution) for ratio in ratios}
            for resolution in spec.resolutions
        }
        return ModelOffer(
            model=name,
            # The general validation's limits hold too, whatever a model's settings say.
            maxPromptLength=min(spec.max_prompt_chars, MAX_PROMPT_CHARS),
            maxImages=min(spec.max_images, MAX_IMAGE_INPUTS),
            aspectRatios=[ratio.value for ratio in spec.aspect_ratios],
            resolutions=[resolution.value for resolution in spec.resolutions],
            outputFormats=[fmt.value for fmt in spec.output_formats],
            defaults={field: _default(spec, field) for field in _CHOICES},
            outputSizes=sizes,
            prices={
                resolution.value: self._billing.price(key, name, resolution)
                for resolution in spec.resolutions
            },
            batchPrices={
                resolution.value: self._billing.price(key, name, resolution, Lane.BATCH)
                for resolution in spec.resolutions
            },
        )


def _size(ratio: AspectRatio, resolution: Resolution) -> PixelSize:
    width, height = output_size(ratio, resolution)
    return PixelSize(width=width, height=height)


def _default(spec: ModelSpec, field: str) -> str:
    """The value createTask gives ``field`` when it is left out (``models.spec_input``)."""
    value = spec.defaults.get(field)
    if value is None:
        return str(TaskInput.model_fields[field].default)
    return normalise_choice(field, value)

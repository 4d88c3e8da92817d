"""What the user tells the model card that the model cannot tell it: task, dataset, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_ATTRIBUTE = "_peft_vision_ext_card"

PRESET_ATTRIBUTE = "_peft_vision_ext_preset"
TASKS = ("image-classification", "image-segmentation", "image-feature-extraction", "object-detection",
         "keypoint-detection", "depth-estimation", "zero-shot-image-classification", "zero-shot-object-detection",
         "video-classification", "mask-generation")


@dataclass
class CardInfo:
    task: str | None = None
    dataset: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    base_weights: str | None = None  # torchvision: the weights enum name the base was built with


def describe(
    model: Any,
    *,
    task: str | None = None,
    dataset: str | None = None,
    metrics: dict[str, float] | None = None,
    base_weights: str | None = None,
) -> Any:
    """Record facts for the adapter's model card; ``save_pretrained`` / ``push_to_hub`` write them.

    ``task``: one of :data:`TASKS` (inferred from the model when not given). ``dataset``: a Hub dataset id or a
    name. ``metrics``: name -> value (merged into earlier ones). ``base_weights``: for torchvision bases, the
    weights they were built with (``"IMAGENET1K_V1"`` or ``"MobileNet_V2_Weights.IMAGENET1K_V1"``), so
    :func:`peft_vision_ext.load_adapter` can rebuild them. Works on the base model or the PeftModel; returns it.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"describe(task={task!r}): use one of {', '.join(TASKS)}.")
    for name, value in (metrics or {}).items():
        if not isinstance(name, str) or not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"describe(metrics=...): expected name -> number, got {name!r}: {value!r}.")
    info = card_info(model)
    info.task = task or info.task
    info.dataset = dataset or info.dataset
    info.metrics.update({name: float(value) for name, value in (metrics or {}).items()})
    info.base_weights = base_weights or info.base_weights
    _holder(model).__dict__[_ATTRIBUTE] = info
    return model


def card_info(model: Any) -> CardInfo:
    """The facts recorded with :func:`describe` (on the PeftModel or its base model); empty when none."""
    for candidate in _candidates(model):
        info = candidate.__dict__.get(_ATTRIBUTE)
        if info is not None:
            return info
    return CardInfo()


def _candidates(model: Any) -> list[Any]:
    found = []
    while model is not None and model not in found:
        found.append(model)
        inner = getattr(model, "module", None)  # DDP / accelerate wrappers
        if inner is None and hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
            inner = model.get_base_model()
        model = inner
    return found


def _holder(model: Any) -> Any:
    """Store on the innermost model: it survives get_peft_model and is what a rebuilt PeftModel wraps."""
    return _candidates(model)[-1]


def record_preset(config: Any, preset: str) -> None:
    """Remember which preset made ``config``'s targets (kept out of adapter_config.json; the card reads it)."""
    config.__dict__[PRESET_ATTRIBUTE] = preset

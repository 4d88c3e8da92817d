"""Facts the vision model card is made of, readable by every layer above the data (the hub package writes them):
what the user tells the card that the model cannot tell it (task, dataset, metrics, base weights; :func:`describe`),
the preset that chose a config's targets, which library a model comes from and whether it is a vision model, and a
PeftModel's bare base state and trained-in-full heads (which :mod:`peft_vision_ext.distributed` computes across
processes for the card)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .families import detect_family
from .fingerprints import fingerprint

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


#: On a sharded PeftModel during save_adapter: {"shapes": name -> meta tensor, "fingerprint": name -> hash} of the
#: bare base, computed by every process together (peft_vision_ext.distributed.save).
PRECOMPUTED_BASE = "_peft_vision_ext_precomputed_base"
_WRAPPER_PARTS = ("modules_to_save", "original_module")


def library_of(model: nn.Module) -> str | None:
    """``timm``, ``transformers``, ``torchvision`` or ``None`` (a model of the user's own)."""
    module = type(model).__module__
    if module.startswith("timm.") and hasattr(model, "pretrained_cfg"):
        return "timm"
    if module.startswith("transformers.") and hasattr(model, "config"):
        return "transformers"
    if module.startswith("torchvision.models"):
        return "torchvision"
    if module.startswith("peft_vision_ext.") and isinstance(getattr(model, "recipe", None), dict):
        return "peft_vision_ext"  # a recipe of ours (peft_vision_ext.detection.RECIPES): rebuilt from its arguments
    return None


def is_vision_model(model: nn.Module) -> bool:
    """Models whose adapters get a vision card: timm, torchvision, transformers with pixel inputs, or described."""
    library = library_of(model)
    if library == "transformers":
        if getattr(model, "main_input_name", None) == "pixel_values":
            return True
        detection = detect_family(model)  # text-queried detectors (OWL-ViT: input_ids first), dual encoders
        return detection is not None and detection.registered
    return library is not None or card_info(model).task is not None


def base_state_of_peft_model(peft_model: Any, state_dict: dict[str, torch.Tensor] | None = None
                             ) -> dict[str, torch.Tensor]:
    """The bare base model's state dict inside a PeftModel: adapter tensors out, ``base_layer`` unwrapped.

    ``state_dict``: the PeftModel's full state dict (keys ``base_model.model.*``, as Trainer gathers it under FSDP) to
    read instead of the model's own tensors.
    """
    adapter_names = set(peft_model.peft_config)
    if state_dict is None:
        items = peft_model.get_base_model().state_dict().items()
    else:
        prefix = "base_model.model."
        items = ((name[len(prefix):], tensor) for name, tensor in state_dict.items() if name.startswith(prefix))
    state = {}
    for name, tensor in items:
        parts = name.split(".")
        if adapter_names.intersection(parts) or any(p in _WRAPPER_PARTS for p in parts):
            continue
        state[".".join(p for p in parts if p != "base_layer")] = tensor
    return state


def precomputed_base(peft_model: Any, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The :data:`PRECOMPUTED_BASE` record (shapes, fingerprint) of the base in a full ``state_dict`` of the model."""
    state = base_state_of_peft_model(peft_model, state_dict)
    return {"shapes": {name: torch.empty(t.shape, dtype=t.dtype, device="meta") for name, t in state.items()},
            "fingerprint": fingerprint(state, list(heads_of(peft_model)))}


def heads_of(peft_model: Any) -> dict[str, nn.Module]:
    """The modules PEFT trains in full (``modules_to_save``) by path, as the base model had them before."""
    # Every path: a head shared by two paths (transformers 4.x Deformable DETR: model.decoder.bbox_embed is
    # bbox_embed) is excluded from the base fingerprint under both, as the state dict lists it under both.
    return {name: module.original_module
            for name, module in peft_model.get_base_model().named_modules(remove_duplicate=False)
            if type(module).__name__ == "ModulesToSaveWrapper"}

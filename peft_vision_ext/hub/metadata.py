"""What it takes to rebuild an adapter's base model: library, name, weights, heads, quantization, fingerprint.

Written next to every saved vision adapter as ``peft_vision_ext.json`` (see :mod:`.card`) and read by
:func:`peft_vision_ext.load_adapter`. The fingerprint (a SHA-256 per base tensor, heads excluded) lets the loader
prove the rebuilt base is the one the adapter was trained on, instead of silently giving other outputs.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
from torch import nn

from ..card_facts import card_info, library_of
from ..families import detect_family
from ..fingerprints import under
from ..quantization.quantize import QUANTIZATION_RECORD
from ..versions import __version__

METADATA_FILE = "peft_vision_ext.json"
FORMAT_VERSION = 1


def base_spec(model: nn.Module, state: dict[str, torch.Tensor] | None = None,
              heads: list[str] | None = None) -> dict[str, Any]:
    """Library-specific recipe for the bare base model (weights included where the library records them).

    ``state``/``heads``: the bare base's state dict and head paths when ``model`` already carries adapters.
    """
    library = library_of(model)
    if library == "timm":
        return _timm_spec(model)
    if library == "transformers":
        config = model.config
        return {"library": "transformers", "class": type(model).__name__,
                "name_or_path": getattr(config, "_name_or_path", None) or None,
                "quantization_config": _to_dict(getattr(config, "quantization_config", None))}
    if library == "torchvision":
        weights = card_info(model).base_weights
        builder = torchvision_builder(model, state, heads or (), weights)
        spec = {"library": "torchvision", "builder": builder,
                "weights": _qualified_weights(builder, weights) if weights else None}
        size = detector_input_size(model)
        if size:
            spec["builder_kwargs"] = size
        return spec
    if library == "peft_vision_ext":
        return {"library": "peft_vision_ext", **model.recipe}
    return {"library": None, "class": f"{type(model).__module__}.{type(model).__qualname__}"}


def _timm_spec(model: nn.Module) -> dict[str, Any]:
    cfg = dict(model.pretrained_cfg or {})
    source = cfg.get("source") or "timm"
    spec: dict[str, Any] = {"library": "timm", "architecture": cfg.get("architecture"), "tag": cfg.get("tag"),
                            "source": source, "hf_hub_id": cfg.get("hf_hub_id"),
                            "model_args": _jsonable(getattr(model, "_model_args", None) or {})}
    if source == "local-dir":
        spec["local_dir"] = os.path.abspath(cfg["file"])
        spec["hf_hub_id"] = None
    return spec


def hub_base_model(spec: dict[str, Any]) -> str | None:
    """The Hub repo id of the base weights, for the card's ``base_model`` (None for local folders)."""
    if spec.get("library") == "timm":
        hub_id = spec.get("hf_hub_id")
    elif spec.get("library") == "transformers":
        hub_id = spec.get("name_or_path")
    else:
        return None
    if not hub_id or os.path.exists(hub_id) or hub_id.count("/") != 1 or hub_id.startswith((".", "/")):
        return None
    return hub_id


def describe_base(spec: dict[str, Any]) -> str:
    """One line naming the base model for humans (the card, error messages)."""
    library = spec.get("library")
    if library == "timm":
        where = spec.get("local_dir") or spec.get("hf_hub_id") or spec.get("architecture")
        return f"timm `{spec.get('architecture')}` ({where})"
    if library == "transformers":
        return f"transformers `{spec.get('class')}` ({spec.get('name_or_path') or 'no name or path'})"
    if library == "torchvision":
        return f"torchvision `{spec.get('builder')}` (weights {spec.get('weights') or 'not recorded'})"
    if library == "peft_vision_ext":
        return f"peft_vision_ext `{spec.get('builder')}` (weights {spec.get('weights') or 'random init'})"
    return f"`{spec.get('class')}` (a model of your own)"


def torchvision_builder(model: nn.Module, state: dict[str, torch.Tensor] | None = None,
                        heads: list[str] | tuple[str, ...] = (), weights: str | None = None) -> str | None:
    """The torchvision builder that makes ``model``'s architecture (same class, same shapes outside the heads).

    Builders with identical weights shapes (Faster R-CNN MobileNetV3 FPN and its 320 px variant) are told apart by
    the recorded ``weights`` (their enums differ), else by the detector's input transform.
    """
    import torchvision

    if state is None:
        state, heads = model.state_dict(), list(detect_family(model).heads)
    shapes = _shapes(state, heads)
    matches: list[tuple[str, nn.Module]] = []
    for name in sorted(torchvision.models.list_models()):
        builder = torchvision.models.get_model_builder(name)
        if builder.__module__ != type(model).__module__:
            continue
        # Detection / segmentation builders load ImageNet backbone weights by default: build without any.
        kwargs: dict[str, Any] = {"weights": None}
        if "weights_backbone" in inspect.signature(builder).parameters:
            kwargs["weights_backbone"] = None
        with torch.device("meta"):
            try:
                candidate = builder(**kwargs)
            except Exception:  # noqa: BLE001 - builders needing extra arguments are not candidates
                continue
        if type(candidate) is type(model) and _shapes(candidate.state_dict(), heads) == shapes:
            matches.append((name, candidate))
    if weights and "." in weights:
        enum_name = weights.rpartition(".")[0]
        named = [name for name, _ in matches if torchvision.models.get_model_weights(name).__name__ == enum_name]
        if named:
            return named[0]
    same_transform = [name for name, candidate in matches if _transform_of(candidate) == _transform_of(model)]
    return (same_transform or [name for name, _ in matches] or [None])[0]


def _transform_of(model: nn.Module) -> str:
    transform = getattr(model, "transform", None)
    return repr(transform) if isinstance(transform, nn.Module) else ""


def detector_input_size(model: nn.Module) -> dict[str, Any]:
    """A torchvision detector's resize settings (``min_size``/``max_size`` builder arguments), so a rebuilt base
    sees images at the size it was trained on; empty for other models (and SSD, whose size is its architecture)."""
    transform = getattr(model, "transform", None)
    if type(model).__name__ not in ("FasterRCNN", "MaskRCNN", "KeypointRCNN", "RetinaNet", "FCOS") \
            or not hasattr(transform, "min_size"):
        return {}
    return {"min_size": list(transform.min_size), "max_size": int(transform.max_size)}


def _shapes(state: dict[str, torch.Tensor], heads: list[str] | tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Shapes by name outside the heads (a new head changes the output size, not the architecture). BatchNorm's
    ``num_batches_tracked`` is left out: torchvision builds with pretrained weights swap BatchNorm2d for
    FrozenBatchNorm2d, which has none."""
    return {name: tuple(t.shape) for name, t in state.items()
            if not under(name, heads) and not name.endswith("num_batches_tracked")}


def _qualified_weights(builder: str | None, weights: str) -> str:
    """``"IMAGENET1K_V1"`` -> ``"MobileNet_V2_Weights.IMAGENET1K_V1"`` (validated against torchvision)."""
    import torchvision

    if builder is None:
        return weights
    enum = torchvision.models.get_model_weights(builder)
    member = weights.rpartition(".")[2]
    if member not in enum.__members__:
        raise ValueError(f"{weights!r} is not a weights name of torchvision {builder}: use one of "
                         f"{', '.join(enum.__members__)}.")
    return f"{enum.__name__}.{member}"


def quantization_of(model: nn.Module) -> dict[str, Any] | None:
    """How :func:`peft_vision_ext.quantize` quantized the base, if it did."""
    record = model.__dict__.get(QUANTIZATION_RECORD)
    return dict(record) if record else None


def head_shapes(heads: dict[str, nn.Module]) -> dict[str, dict[str, Any]]:
    """Every parametrised leaf inside the task heads (path -> module): type and weight shape, for resizing."""
    leaves: dict[str, dict[str, Any]] = {}
    for path, head in heads.items():
        for name, module in head.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)):
                leaves[f"{path}.{name}" if name else path] = {"type": type(module).__name__,
                                                              "shape": list(module.weight.shape)}
    return leaves


#: On a PeftModel while one of its adapters is saved through PEFT's conversion to plain LoRA (same hook): its name.
CONVERTED_ADAPTER = "__peft_vision_ext_converted_adapter__"


def _to_dict(config: Any) -> dict[str, Any] | None:
    if config is None:
        return None
    return _jsonable(config.to_dict() if hasattr(config, "to_dict") else dict(config))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return str(value)


def plugin_version() -> str:
    return __version__

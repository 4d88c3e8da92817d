"""Vision target-module presets: which layers of a vision model an adapter should wrap.

>>> list_presets(model)                         # {"attention": [...], "mlp": [...], ...}
>>> resolve_targets(model, "attention", method="lora")
>>> preset_config(model, "lora", r=16)          # a ready LoraConfig with the family's default preset

Layer: features (resolution). It reads the data below (families, the matrix, card facts), fills configs with
the fused-slices layout and AdaLoRA's defaults; quantization, the analysis, the hub and the hooks read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..adalora.defaults import vision_adalora_kwargs
from ..card_facts import record_preset
from ..errors import EmptyPresetError, NotAVisionModelError, PresetRefusedError, UnknownPresetError, name_list
from ..families import Detection, LayerInfo, Part, Role, VisionFamily, detect_family, families, register_family
from ..families.roles import mlp_blocks, residual_blocks, split_mlps
from ..fused.slices import FUSED_CHOICES, PRESET_FUSED, request_preset_slices
from ..layers.kinds import LayerKind, norm_then_activation, plain_norm
from ..layers.probe import observe
from ..matrix.verdicts import METHOD_NAMES, Operation, config_class, entry
from ..routing import BIAS_MERGING_METHODS
from ..targets import method_name
from ..versions import peft_version
from .catalog import BLOCK_PRESETS, PRESETS, SUPPORTED_METHODS, TOWERS, Preset, method_layer_kinds

__all__ = [
    "PRESETS", "Preset", "Role", "Part", "LayerInfo", "VisionFamily", "Detection", "Resolution", "detect_family",
    "families", "register_family", "list_presets", "resolve_targets", "resolve_default", "preset_config",
    "fill_config", "complete_config", "SUPPORTED_METHODS",
]


def _detect(model: nn.Module) -> Detection:
    detection = detect_family(model)
    if detection is None:
        raise NotAVisionModelError(
            f"peft-vision-ext found no Linear or Conv2d layer to adapt in {type(model).__name__}; "
            "pass target_modules explicitly."
        )
    return detection


def _parts(preset: Preset, towers: str) -> frozenset[Part]:
    """The parts ``preset`` selects from: its own (every part when it has none), within the chosen towers."""
    if towers not in TOWERS:
        raise ValueError(f"towers={towers!r}: use one of {', '.join(TOWERS)} (a dual encoder's vision tower, text "
                         "tower or both).")
    return (preset.parts or frozenset(Part)) & TOWERS[towers]


def _in_head(detection: Detection, layer: LayerInfo) -> bool:
    # a norm inside a task head keeps the norm role (the head is trained in full: no adapter goes inside it)
    return any(layer.name == head or layer.name.startswith(head + ".") for head in detection.heads)


def _select(detection: Detection, preset: Preset, method: str | None, towers: str = "vision") -> list[LayerInfo]:
    kinds = method_layer_kinds(method, peft_version()) if method else None
    parts = _parts(preset, towers)
    return [
        layer
        for layer in detection.layers
        if layer.role in preset.roles and layer.part in parts and (kinds is None or layer.layer_kind in kinds)
        and not (layer.role is Role.NORM and _in_head(detection, layer))
    ]


def list_presets(model: nn.Module, method: str | None = None, towers: str = "vision") -> dict[str, list[str]]:
    """Every preset that selects something on ``model`` -> the module paths it selects."""
    detection = _detect(model)
    result = {}
    for name, preset in PRESETS.items():
        selected = _select(detection, preset, method, towers)
        if selected:
            result[name] = [layer.name for layer in selected]
    return result


def resolve_targets(model: nn.Module, preset: str, method: str | None = None, towers: str = "vision") -> list[str]:
    """Module paths selected by ``preset`` on ``model`` (restricted to layer kinds ``method`` can wrap).

    ``towers`` (dual encoders such as CLIP, SigLIP, OWL-ViT): ``"vision"`` (default), ``"text"`` or ``"both"``.
    Raises :class:`UnknownPresetError` (listing the valid presets), :class:`PresetRefusedError` when the preset selects
    layers but the compatibility matrix refuses them all for ``method`` (its reasons and alternatives), or
    :class:`EmptyPresetError` (naming the detected family, the parts and the roles found). Reads the model only.
    """
    detection = _detect(model)
    if preset in BLOCK_PRESETS:
        return _blocks(model, detection)
    return [layer.name for layer in _resolve(detection, preset, method, towers)]


def _selecting(detection: Detection, method: str | None, towers: str) -> list[str]:
    """Names of the presets that select something on the model (for error messages)."""
    return [name for name, p in PRESETS.items() if _select(detection, p, method, towers)]


def _resolve(detection: Detection, preset: str, method: str | None, towers: str = "vision") -> list[LayerInfo]:
    if preset not in PRESETS:
        valid = _selecting(detection, method, towers)
        raise UnknownPresetError(
            f"Unknown preset {preset!r} for {detection.family.name}. Presets valid for this model"
            f"{' with ' + method if method else ''}: {', '.join(valid) or 'none'}."
        )
    selected = _select(detection, PRESETS[preset], method, towers)
    if not selected:
        roles = ", ".join(f"{r} x{n}" for r, n in sorted(detection.roles_found().items())) or "none"
        parts = ", ".join(f"{p} x{n}" for p, n in sorted(detection.parts_found().items())) or "none"
        wanted = ", ".join(sorted(r.value for r in PRESETS[preset].roles))
        wanted_parts = ", ".join(sorted(p.value for p in _parts(PRESETS[preset], towers)))
        left_out = dropped(detection, preset, method, towers) if method else {}
        if left_out:
            name = METHOD_NAMES.get(method, method)
            lines = [f"Preset {preset!r} selects {sum(map(len, left_out.values()))} modules of this "
                     f"{detection.family.name} model, and {name} can adapt none of them on peft {peft_version()}:"]
            lines += [f"{name} cannot adapt {kind} layers ({name_list(paths)}): {reason}. Instead: {instead}."
                      for (kind, reason, instead), paths in left_out.items()]
            lines.append("The model was not modified.")
            raise PresetRefusedError("\n".join(lines), method, "train", left_out)
        valid = _selecting(detection, method, towers)
        where = f" in parts: {wanted_parts}" if PRESETS[preset].parts or towers != "vision" else ""
        has_parts = f"parts: {parts}; " if len(detection.parts_found()) > 1 or where else ""
        raise EmptyPresetError(
            f"Preset {preset!r} selects no module of this {detection.family.name} model"
            f"{' that ' + method + ' can adapt' if method else ''} (it wants roles: {wanted}{where}). "
            f"This model has {has_parts}roles: {roles}. Presets that select something here: "
            f"{', '.join(valid) or 'none'}. Choose one of those or pass target_modules explicitly."
        )
    return selected


def dropped(detection: Detection, preset: str, method: str, towers: str = "vision"
            ) -> dict[tuple[str, str, str], list[str]]:
    """(layer kind, reason, what to use instead) -> module paths ``preset`` selects but leaves out for ``method``,
    because the compatibility matrix refuses that kind (or allows it only under a condition) for the method."""
    kinds = method_layer_kinds(method, peft_version())
    left_out: dict[tuple[str, str, str], list[str]] = {}
    for layer in _select(detection, PRESETS[preset], None, towers):
        if kinds is None or layer.layer_kind in kinds or layer.layer_kind == "norm":
            continue
        item = entry(method, LayerKind(layer.layer_kind), peft_version())
        if item is None:
            reason, instead = "not covered by the compatibility matrix", "pass target_modules explicitly"
        elif item.condition is not None and item.train.status.allowed:
            verdict = item.condition_verdict
            reason = f"allowed only when {item.condition.description}, which presets do not assume ({verdict.reason})"
            instead = f"{verdict.instead}; or pass target_modules explicitly with such a rank"
        else:
            verdict = item.verdict(Operation.TRAIN)
            reason, instead = verdict.reason, verdict.instead
        left_out.setdefault((layer.layer_kind, reason, instead), []).append(layer.name)
    return left_out


@dataclass(frozen=True)
class Resolution:
    """What a preset resolves to for one model and method: the pieces of a PEFT config."""
    family: str
    preset: str
    target_modules: list[str]
    modules_to_save: list[str]
    feedforward_modules: list[str]  # IA3 only


def _mergeable_by_scale_shift(model: nn.Module, selected: list[LayerInfo]) -> list[LayerInfo]:
    """Leave out what a scale and shift of the output could not merge into: layers whose parent passes its own bias
    to ``F.linear`` (timm BEiT/EVA/SwinV2's fused qkv, torchvision Swin) and norms that do more than normalise (other
    than timm's norm + activation layers, where SSF goes between the two); and layers the forward never calls (SSF's
    preset reaches every part of a task model)."""
    observation = observe(model, [layer.name for layer in selected])
    left_out = set(observation.weight_reads) | set(observation.never_called([layer.name for layer in selected]))
    return [layer for layer in selected if layer.name not in left_out
            and (layer.role is not Role.NORM or _scale_shift_mergeable_norm(model.get_submodule(layer.name)))]


def _scale_shift_mergeable_norm(module: nn.Module) -> bool:
    return plain_norm(module) or norm_then_activation(module)


def resolve_default(model: nn.Module, method: str, preset: str | None = None, towers: str = "vision") -> Resolution:
    """Targets, task head and (IA3) feedforward modules of ``preset`` or the family's default preset."""
    method = method.lower()
    detection = _detect(model)
    name = preset or detection.family.default_preset(method)
    if name is None:
        raise UnknownPresetError(
            f"peft-vision-ext has no default preset for method {method!r} on {detection.family.name}; "
            f"pass preset=... (one of {', '.join(PRESETS)}) or target_modules explicitly."
        )
    if name in BLOCK_PRESETS:
        return Resolution(detection.family.name, name, _blocks(model, detection), list(detection.heads), [])
    selected = _resolve(detection, name, method, towers)
    if method in BIAS_MERGING_METHODS:  # SSF: its default stays mergeable (a deployed model that costs nothing extra)
        selected = _mergeable_by_scale_shift(model, selected)
    feedforward = [layer.name for layer in selected if layer.role == Role.FC2] if method == "ia3" else []
    return Resolution(
        family=detection.family.name,
        preset=name,
        target_modules=[layer.name for layer in selected],
        modules_to_save=list(detection.heads),
        feedforward_modules=feedforward,
    )


def _blocks(model: nn.Module, detection: Detection) -> list[str]:
    """The modules preset ``blocks`` selects: MLP blocks, else residual conv blocks (module paths, model order)."""
    # a CNN's squeeze-and-excitation modules hold fc1 / fc2 too: on CNNs, residual conv blocks only
    found = ((mlp_blocks(detection.layers) if detection.kind != "cnn" else [])
             or residual_blocks(model, detection.heads))
    if found:
        return found
    split = split_mlps(detection.layers)
    why = (f"its MLPs are split across two modules ({name_list(split)}, their contractions in a sibling module: the "
           "ViT-style intermediate / output of DPT and of transformers 4.x ViT, DeiT, BEiT, Swin), so no module holds "
           "one" if split else "it has no MLP block (a module holding fc1 and fc2) and no residual conv block")
    raise EmptyPresetError(
        f"Preset 'blocks' selects no module of this {detection.family.name} model: {why}. A parallel adapter "
        "(AdaptFormer) sits beside a whole module. Instead: pass target_modules explicitly (module paths; each gets "
        "an adapter beside it), or use LoRA / SSF, whose presets adapt single layers. The model was not modified.")


def exact_targets(model: nn.Module, names: list[str]) -> set[str] | str:
    """``target_modules`` for exactly ``names``: the names themselves, or, where PEFT's suffix matching would also take
    other modules (the final ``norm`` of a timm ViT ends ``patch_embed.norm`` and ``blocks.0.mlp.norm`` too), one
    regular expression that PEFT matches against whole module paths."""
    wanted = set(names)
    suffixes = {name for name in wanted if "." not in name} | {name.rpartition(".")[2] for name in wanted}
    ambiguous = any(path not in wanted and path.rpartition(".")[2] in suffixes
                    and any(path.endswith("." + name) for name in wanted)
                    for path, _ in model.named_modules())
    return "|".join(re.escape(name) for name in sorted(wanted)) if ambiguous else wanted


def fill_config(config: Any, resolution: Resolution, method: str, model: nn.Module) -> None:
    """Give ``config`` what ``resolution`` resolved: its targets, and where the user left them ``None`` the task head
    (``modules_to_save``) and IA3's feedforward modules; LoRA: fused q/k/v layers as ``PRESET_FUSED`` says."""
    config.target_modules = exact_targets(model, resolution.target_modules)
    if method == "ia3" and getattr(config, "feedforward_modules", None) is None:
        config.feedforward_modules = set(resolution.feedforward_modules)
    if getattr(config, "modules_to_save", None) is None and resolution.modules_to_save:
        config.modules_to_save = list(resolution.modules_to_save)
    if resolution.preset in PRESETS:
        request_preset_slices(config, PRESETS[resolution.preset].roles)


def complete_config(model: nn.Module, config: Any, *, strict: bool = False) -> Resolution | None:
    """The first step of the one injection pipeline: a config with ``target_modules=None`` gets the family's default
    preset, in place (targets; where left ``None``, the task head and IA3's feedforward modules; LoRA: fused q/k/v
    layers as ``PRESET_FUSED`` says), and remembers which preset it was (the model card reads it).

    The ``vision-default-targets`` hook runs it at every injection, :func:`peft_vision_ext.check` in its dry run and
    :func:`peft_vision_ext.get_quantized_peft_model` before it quantizes; the hook then enforces the matrix, injects
    and applies the inits. Returns the resolution, or ``None`` when nothing is filled: explicit targets or
    ``target_parameters``, a method without presets, or (unless ``strict``) a model with no family the plugin
    recognises, which PEFT then refuses with its own "specify target_modules".
    """
    method = method_name(config)
    if (method not in SUPPORTED_METHODS or getattr(config, "target_modules", None) is not None
            or getattr(config, "target_parameters", None)):
        return None
    try:
        resolution = resolve_default(model, method)
    except NotAVisionModelError:
        if strict:
            raise
        return None
    fill_config(config, resolution, method, model)
    record_preset(config, resolution.preset)
    return resolution


def _config_class(method: str) -> type:
    if method not in SUPPORTED_METHODS:
        raise ValueError(f"preset_config supports methods {', '.join(SUPPORTED_METHODS)}; got {method!r}.")
    return config_class(method)


def preset_config(model: nn.Module, method: str, preset: str | None = None, *, fused: str = PRESET_FUSED,
                  towers: str = "vision", **method_kwargs: Any) -> Any:
    """A ready PEFT config (LoraConfig, LoHaConfig, ...) for ``model`` using ``preset`` or the default one.

    ``method_kwargs`` go to the config class; an explicit ``target_modules`` / ``modules_to_save`` /
    ``feedforward_modules`` there wins over the preset. ``fused`` (LoRA) decides how fused q/k/v layers (timm
    ``qkv``/``kv``, nn.MultiheadAttention) are adapted: ``"whole"`` (the default,
    :data:`~peft_vision_ext.fused.slices.PRESET_FUSED`: one rank-r LoRA on the layer, which measured better than
    slices at the same parameter count) or ``"slices"``: slice by slice, the slices the preset names (``attention``: q
    and v), each with its own rank-r LoRA. ``towers`` (dual encoders: CLIP, SigLIP,
    OWL-ViT, Grounding DINO): adapt the ``"vision"`` tower (default), the ``"text"`` tower or ``"both"``.

    AdaLoRA: ``r`` is the LoRA rank whose final budget to match (``target_r = r``, ``init_r = 1.5 r``); fields left
    out get the vision defaults of :mod:`peft_vision_ext.adalora.defaults` (scale, regulariser weight), and the
    factors start orthonormal (:mod:`peft_vision_ext.adalora.init`). ``total_step`` is still required by PEFT;
    ``AdaLoraCallback`` replaces it with the Trainer's step count and derives the schedule.
    """
    method = method.lower()
    if fused not in FUSED_CHOICES:
        raise ValueError(f"preset_config(fused={fused!r}): use 'whole' or 'slices'.")
    config_class = _config_class(method)
    if method == "adalora":  # comparable budget, scale and regulariser weight (adalora/defaults.py)

        detection = detect_family(model)
        method_kwargs = vision_adalora_kwargs(method_kwargs, detection.kind if detection is not None else None)
    if method_kwargs.get("target_modules") is None:
        resolution = resolve_default(model, method, preset, towers)
        method_kwargs["target_modules"] = exact_targets(model, resolution.target_modules)
        if method == "ia3" and method_kwargs.get("feedforward_modules") is None:
            method_kwargs["feedforward_modules"] = resolution.feedforward_modules
        if method_kwargs.get("modules_to_save") is None and resolution.modules_to_save:
            method_kwargs["modules_to_save"] = resolution.modules_to_save
        config = config_class(**method_kwargs)

        record_preset(config, resolution.preset)
        if resolution.preset in PRESETS:
            request_preset_slices(config, PRESETS[resolution.preset].roles, fused)
        return config
    if preset is not None:
        raise ValueError("Pass either preset=... or target_modules=..., not both.")
    return config_class(**method_kwargs)

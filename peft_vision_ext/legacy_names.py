"""Adapters trained on transformers 4.x, loaded on transformers 5.x.

transformers 5 renamed the modules of ViT, DeiT, DINOv2, Swin, SegFormer... (``encoder.layer.N.attention.
attention.query`` became ``layers.N.attention.q_proj``) and converts old *model* checkpoints on load with its
weight-conversion tables. PEFT adapters saved on 4.x name the old modules in ``target_modules``,
``modules_to_save`` and every state-dict key. This module derives the old <-> new module names from those
same tables (nothing hand-written per model) so the plugin can translate old adapters on load.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from torch import nn

logger = logging.getLogger("peft_vision_ext")

# Parts of an adapter state-dict key that follow the module path.
_ADAPTER_KEY_PART = re.compile(
    r"\.(lora_[A-Za-z_]+|hada_[A-Za-z0-9_]+|lokr_[A-Za-z0-9_]+|ia3_l|modules_to_save|original_module|"
    r"lora_magnitude_vector|weight|bias)(\.|$)"
)


def _transformers_v5_renamings(model: nn.Module) -> list[Any] | None:
    if not hasattr(getattr(model, "config", None), "model_type"):
        return None
    try:
        import transformers

        if int(transformers.__version__.split(".")[0]) < 5:
            return None
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except (ImportError, ValueError):
        return None
    renamings = [c for c in get_model_conversion_mapping(model, add_legacy=False) if type(c) is WeightRenaming]
    return renamings or None


def v4_module_names(model: nn.Module) -> dict[str, str]:
    """{current (v5) module path: its transformers-4.x path} for every module whose name changed."""
    renamings = _transformers_v5_renamings(model)
    if not renamings:
        return {}
    from transformers.core_model_loading import apply_renamings

    reverse = [renaming.reverse_transform() for renaming in renamings[::-1]]
    mapping = {}
    for name, _ in model.named_modules():
        if not name:
            continue
        old = apply_renamings(f"{name}.weight", reverse)[: -len(".weight")]
        if old != name:
            mapping[name] = old
    return mapping


def translate_config(model: nn.Module, config: Any, matches: Any) -> dict[str, str] | None:
    """Rewrite ``config.target_modules`` / ``modules_to_save`` from 4.x names to the model's 5.x names.

    ``matches(config, key) -> bool`` is PEFT's own target matcher. Only acts when the targets match no
    module of the model under its current names but do match under the 4.x names. Returns the
    {new: old} mapping used, or ``None`` when nothing was translated.
    """
    targets = getattr(config, "target_modules", None)
    if not targets:
        return None
    current = [name for name, _ in model.named_modules() if name]
    if any(matches(config, name) for name in current):
        return None
    mapping = v4_module_names(model)
    if not mapping:
        return None
    translated = sorted(new for new, old in mapping.items() if matches(config, old))
    if not translated:
        return None
    old_targets = targets
    config.target_modules = set(translated)
    saved = getattr(config, "modules_to_save", None)
    if saved:
        new_saved: list[str] = []
        for entry in saved:
            renamed = [new for new, old in mapping.items() if old.endswith(entry)]
            keep = any(name.endswith(entry) for name in current) or not renamed
            new_saved.extend([entry] if keep else renamed)
        config.modules_to_save = new_saved
    # Said of the config in hand: a brand-new one (there are no weights yet) as much as one being loaded, whose
    # weights translate_state_dict renames and reports separately.
    new_names = sorted({name.rsplit(".", 1)[-1] for name in translated})
    saved_note = f"; modules_to_save {list(saved)} -> {config.modules_to_save}" if saved and list(
        saved) != config.modules_to_save else ""
    logger.warning(
        "peft-vision-ext: target_modules %s are transformers 4.x module names; this model has the transformers 5 "
        "names, so this config now targets %d modules under them (e.g. %s)%s. Pass target_modules=%s to silence "
        "this.",
        sorted(old_targets) if not isinstance(old_targets, str) else repr(old_targets), len(translated),
        translated[0], saved_note, new_names,
    )
    return mapping


def translate_state_dict(model: nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Rename adapter state-dict keys that name transformers 4.x module paths of ``model`` (a 5.x model)."""
    mapping = v4_module_names(model)
    if not mapping:
        return state_dict
    old_to_new = {old: new for new, old in mapping.items()}
    existing = {name for name, _ in model.named_modules()}
    renamed: dict[str, Any] = {}
    changed = 0
    for key, value in state_dict.items():
        new_key = key
        match = _ADAPTER_KEY_PART.search(key)
        if match is not None:
            path, rest = key[: match.start()], key[match.start():]
            prefix = "base_model.model." if path.startswith("base_model.model.") else ""
            module = path[len(prefix):]
            if module in old_to_new and module not in existing:
                new_key = f"{prefix}{old_to_new[module]}{rest}"
                changed += 1
        renamed[new_key] = value
    if changed:
        logger.warning("peft-vision-ext: renamed %d adapter weights from transformers 4.x module names.", changed)
    return renamed

"""Hook ``transformers4-adapters``: adapters saved with transformers 4.x module names, loaded on transformers 5.x."""

from __future__ import annotations

import functools
from typing import Any

from ..legacy_names import translate_config, translate_state_dict
from ..patching import HOOK_MARK


def translate_legacy_targets(tuner: Any, model: Any, adapter_name: str) -> None:
    """Translate a transformers-4.x adapter config (target_modules, modules_to_save) to this 5.x model."""
    from peft.tuners.tuners_utils import check_target_module_exists

    translate_config(model, tuner.peft_config[adapter_name], check_target_module_exists)


def _install_legacy_state_dict_translation() -> None:
    # Why: PeftModel.load_adapter (used by from_pretrained) hands the saved weights to
    # set_peft_model_state_dict, whose keys name transformers-4.x module paths in adapters trained before
    # transformers 5 renamed ViT/DeiT/DINOv2/Swin/SegFormer modules; PEFT only converts MoE layers. We rename
    # those keys (from transformers' own conversion tables) before PEFT matches them. The inject_adapter
    # hook (default_targets.py) translates the config the same way.
    import peft.peft_model as peft_model_module

    original = peft_model_module.set_peft_model_state_dict
    if getattr(original, HOOK_MARK, False):
        return

    @functools.wraps(original)
    def set_peft_model_state_dict(model: Any, peft_model_state_dict: dict, *args: Any, **kwargs: Any) -> Any:
        base = getattr(getattr(model, "base_model", None), "model", model)
        return original(model, translate_state_dict(base, peft_model_state_dict), *args, **kwargs)

    setattr(set_peft_model_state_dict, HOOK_MARK, True)
    peft_model_module.set_peft_model_state_dict = set_peft_model_state_dict

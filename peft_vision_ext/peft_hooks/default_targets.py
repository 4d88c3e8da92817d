"""Hook ``vision-default-targets``: the one injection pipeline, around ``BaseTuner.inject_adapter``.

Every injection (``get_peft_model``, ``inject_adapter_in_model``, ``add_adapter``, ``load_adapter``; also
``check()``'s dry run up to the report and ``get_quantized_peft_model`` before it quantizes) goes: resolve the
default preset into the config (:func:`peft_vision_ext.presets.complete_config`) -> translate transformers-4 names
-> enforce the matrix -> plan fused slices -> PEFT injects -> slices, heads trained in full, AdaLoRA's init.
"""

from __future__ import annotations

import copy
import functools
import logging
from typing import Any

from ..adalora.allocator import quiet_adalora_rank_pattern
from ..adalora.init import apply_requested_init
from ..compat.enforce import enforce_injection
from ..fused import slices
from ..patching import HOOK_MARK
from ..presets import SUPPORTED_METHODS, complete_config
from ..targets import method_name
from .heads_to_save import fix_modules_to_save
from .legacy_adapters import translate_legacy_targets

logger = logging.getLogger("peft_vision_ext")


def _upstream_has_default(tuner: Any, model: Any, config: Any) -> bool:
    """Would PEFT itself resolve ``target_modules=None`` for this model (its model_type tables) to names the model
    has? A model_type's entry can name layers one head class lacks (blip-2's language-model ``q``/``v`` on
    Blip2ForImageTextRetrieval, which has none): PEFT would then raise "Target modules ... not found"."""
    from peft.tuners.tuners_utils import check_target_module_exists

    probe = copy.copy(config)
    try:
        probe = tuner._prepare_adapter_config(probe, tuner.get_model_config(model))
    except ValueError:
        return False
    if getattr(probe, "target_modules", None) is None:
        return False
    return any(check_target_module_exists(probe, name) for name, _ in model.named_modules() if name)


def fill_vision_defaults(tuner: Any, model: Any, adapter_name: str) -> None:
    """Give a vision model with ``target_modules=None`` its family's default preset, head in modules_to_save
    (:func:`peft_vision_ext.presets.complete_config`).

    Only fills fields the user left as ``None``; explicit values are never rewritten. Models that PEFT
    already knows (text models in its tables) and models with nothing adaptable are left to PEFT.
    """
    config = tuner.peft_config[adapter_name]
    if method_name(config) not in SUPPORTED_METHODS or getattr(config, "target_modules", None) is not None:
        return
    if _upstream_has_default(tuner, model, config):
        return
    resolution = complete_config(model, config)
    if resolution is not None:
        logger.info(
            "peft-vision-ext: target_modules=None -> preset %r of %s (%d modules); task head %s trained in full",
            resolution.preset, resolution.family, len(resolution.target_modules),
            resolution.modules_to_save or "none",
        )


def _install_default_targets() -> None:
    # Why: PEFT resolves target_modules=None only through its TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING
    # tables, keyed by config.model_type. timm and torchvision models have no model_type at all, transformers
    # vision types are absent, and the right names differ between transformers 4 and 5; so we resolve in
    # BaseTuner.inject_adapter, the single entry point of get_peft_model, inject_adapter_in_model and
    # PeftModel.add_adapter, before PEFT reads the config.
    from peft.tuners.tuners_utils import BaseTuner

    original = BaseTuner.inject_adapter
    if getattr(original, HOOK_MARK, False):
        return

    @functools.wraps(original)
    def inject_adapter(self: Any, model: Any, adapter_name: str, *args: Any, **kwargs: Any) -> Any:
        fill_vision_defaults(self, model, adapter_name)
        translate_legacy_targets(self, model, adapter_name)
        config = self.peft_config[adapter_name]
        # The compatibility matrix: refuse before PEFT replaces the first module (see matrix_guards.py).
        enforce_injection(model, config)
        # LoRA on q/v slices of fused qkv layers (hook fused-qkv-slices): the stacked ranks go into the config
        # before PEFT builds the layers, the block factors replace PEFT's after.
        slices.prepare(model, config)
        with quiet_adalora_rank_pattern(config):
            result = original(self, model, adapter_name, *args, **kwargs)
        slices.apply(model, adapter_name, config)
        # Heads trained in full: tied ones stay tied, suffix-matched nested copies go (heads_to_save.py).
        fix_modules_to_save(model, adapter_name)
        # AdaLoRA's SVD factors start orthonormal on vision models (adalora/init.py): PEFT exposes no init hook.
        apply_requested_init(self, model, adapter_name)
        return result

    setattr(inject_adapter, HOOK_MARK, True)
    BaseTuner.inject_adapter = inject_adapter

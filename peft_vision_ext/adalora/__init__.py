"""AdaLoRA for vision: conv layers (every supported PEFT version), the Trainer callback that allocates ranks, a
schedule derived from the run, orthonormal initialisation, comparable budgets, the orthogonal regulariser, the
rank allocator's state and the one per-step helper every training loop calls (:func:`step.adalora_step`).

Layer: features. It may import distributed, card_facts, families, layers and the base modules; presets and
everything above read it (the PEFT hooks for AdaLoRA live in :mod:`peft_vision_ext.peft_hooks`)."""

from __future__ import annotations

from .callback import adalora_callback_class
from .defaults import VISION_DEFAULTS, VisionAdaLoraDefaults, vision_adalora_kwargs
from .init import INITS, use_adalora_init
from .layer import AdaLoraConv2d
from .ranks import LayerRank, layer_ranks, rank_pattern_table
from .regularization import add_orthogonal_regularization_grad, orthogonal_regularization
from .schedule import SCHEDULE, ScheduleFractions, apply_schedule, derive_schedule

__all__ = ["INITS", "SCHEDULE", "VISION_DEFAULTS", "AdaLoraConv2d", "AdaLoraCallback", "LayerRank", "ScheduleFractions",
           "VisionAdaLoraDefaults", "add_orthogonal_regularization_grad", "apply_schedule", "derive_schedule",
           "layer_ranks", "orthogonal_regularization", "rank_pattern_table", "use_adalora_init",
           "vision_adalora_kwargs"]


def __getattr__(name: str) -> type:
    if name == "AdaLoraCallback":  # needs transformers' TrainerCallback: built on first use, see callback.py
        return adalora_callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

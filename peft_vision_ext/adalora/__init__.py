"""AdaLoRA for vision: conv layers (every supported PEFT version), the Trainer callback that allocates ranks, a
schedule derived from the run, orthonormal initialisation, comparable budgets and the orthogonal regulariser."""

from __future__ import annotations

from typing import Any

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


def __getattr__(name: str) -> Any:
    if name == "AdaLoraCallback":  # imports transformers' Trainer machinery: only when asked for
        from .callback import AdaLoraCallback

        return AdaLoraCallback
    raise AttributeError(name)

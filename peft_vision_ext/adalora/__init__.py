"""AdaLoRA on convolutions (every supported PEFT version) and the Trainer callback that allocates ranks."""

from __future__ import annotations

from typing import Any

from .layer import AdaLoraConv2d
from .ranks import LayerRank, layer_ranks, rank_pattern_table
from .regularization import orthogonal_regularization

__all__ = ["AdaLoraConv2d", "AdaLoraCallback", "LayerRank", "layer_ranks", "orthogonal_regularization",
           "rank_pattern_table"]


def __getattr__(name: str) -> Any:
    if name == "AdaLoraCallback":  # imports transformers' Trainer machinery: only when asked for
        from .callback import AdaLoraCallback

        return AdaLoraCallback
    raise AttributeError(name)

"""Moved to :mod:`peft_vision_ext.layers.kinds` (layer math, below the data that reads it); re-exported here."""

from ..layers.kinds import (
    CONTAINERS,
    LayerKind,
    base_layer,
    is_linear,
    layer_kind,
)

__all__ = ["CONTAINERS", "LayerKind", "base_layer", "is_linear", "layer_kind"]

"""Moved to :mod:`peft_vision_ext.families.roles` (data, below the features that read roles); re-exported here."""

from ..families.roles import (
    ATTENTION_ROLES,
    CONV_ROLES,
    LINEAR_ROLES,
    LayerInfo,
    Part,
    Role,
    infer_layers,
    linear_role,
)

__all__ = ["ATTENTION_ROLES", "CONV_ROLES", "LINEAR_ROLES", "LayerInfo", "Part", "Role", "infer_layers", "linear_role"]

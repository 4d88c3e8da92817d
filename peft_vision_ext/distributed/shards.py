"""Moved to :mod:`peft_vision_ext.layers.shards` (layer math: AdaLoRA reads sharded tensors too); re-exported here."""

from ..layers.shards import (
    RowShard,
    UnsupportedSharding,
    has_dtensor_parameters,
    is_dtensor,
    is_fsdp1,
    local_tensor,
    row_shard,
)

__all__ = [
    "RowShard", "UnsupportedSharding", "has_dtensor_parameters", "is_dtensor", "is_fsdp1", "local_tensor",
    "row_shard",
]

"""Moved to :mod:`peft_vision_ext.layers.cpu_packing` (layer math: the forward probe holds the repack off too);
re-exported here."""

from ..layers.cpu_packing import (
    BLOCK_N,
    PACKED_FLAG,
    SWITCH,
    cpu_takes_packed_path,
    default_switch_off,
    enable_inference_packing,
    is_packed,
    keep_unpacked,
    repack_held_off,
    unpack,
)

__all__ = [
    "BLOCK_N", "PACKED_FLAG", "SWITCH", "cpu_takes_packed_path", "default_switch_off",
    "enable_inference_packing", "is_packed", "keep_unpacked", "repack_held_off", "unpack",
]

"""Moved to :mod:`peft_vision_ext.layers.probe` (layer math: quantization reads it too); re-exported here."""

from ..layers.probe import (
    Example,
    Observation,
    example_inputs,
    input_ndims,
    logger,
    observe,
)

__all__ = ["Example", "Observation", "example_inputs", "input_ndims", "logger", "observe"]

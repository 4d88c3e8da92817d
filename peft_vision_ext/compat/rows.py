"""Moved to :mod:`peft_vision_ext.matrix.rows` (data, below the presets that read it); re-exported here."""

from ..matrix.rows import (
    CURATED,
    GENERATED,
    LORA_VARIANTS,
    NOT_ROWS,
    OTHER_METHODS,
    ROWS,
    Row,
    installed,
    row_for,
    unknown_methods,
)

__all__ = [
    "CURATED", "GENERATED", "LORA_VARIANTS", "NOT_ROWS", "OTHER_METHODS", "ROWS", "Row", "installed", "row_for",
    "unknown_methods",
]

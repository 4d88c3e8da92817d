"""Moved to :mod:`peft_vision_ext.families.registry` (data, below the features that detect families);
re-exported here."""

from ..families.registry import (
    HEAD_ATTRIBUTES,
    KIND_DEFAULTS,
    Detection,
    Kind,
    Library,
    VisionFamily,
    detect_family,
    families,
    head_names,
    model_library,
    register_family,
)

__all__ = [
    "Detection", "HEAD_ATTRIBUTES", "KIND_DEFAULTS", "Kind", "Library", "VisionFamily", "detect_family",
    "families", "head_names", "model_library", "register_family",
]

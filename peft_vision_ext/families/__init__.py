"""The vision family registry, as data: which model families the plugin knows (timm, transformers, torchvision and
the task models), how their layers are classified into roles and parts, and which task head each trains in full.
:func:`detect_family` reads a model against it; :func:`register_family` adds an entry.

Layer: data, below every feature (presets, quantization, AdaLoRA, the hub all detect families). It may import the
layer math and the base modules only. Importing it registers the classification families, then the task families.
"""

from __future__ import annotations

from . import tasks  # noqa: F401 - registers the detection / segmentation / depth families, after the others
from .registry import Detection, VisionFamily, detect_family, families, head_names, model_library, register_family
from .roles import LayerInfo, Part, Role

__all__ = ["Detection", "LayerInfo", "Part", "Role", "VisionFamily", "detect_family", "families", "head_names",
           "model_library", "register_family"]

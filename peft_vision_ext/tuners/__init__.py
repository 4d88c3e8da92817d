"""The plugin's own PEFT methods (SSF, AdaptFormer), each a package laid out as PEFT's tuners are (config, layer,
model).

:data:`METHODS` is what hook ``vision-peft-methods`` registers with PEFT (:func:`peft.utils.register_peft_method`).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import adaptformer, ssf
from .adaptformer import AdaptFormerConfig, AdaptFormerLayer, AdaptFormerModel
from .base import VisionTunerModel, registered_peft_type
from .ssf import SSFConfig, SSFLayer, SSFModel


@dataclass(frozen=True)
class Method:
    """One method as PEFT registers it: name (``peft_type`` in lower case), config class, tuner model class, the
    prefix of its parameter names."""

    name: str
    config: type
    model: type
    prefix: str


METHODS: tuple[Method, ...] = (
    Method(ssf.NAME, SSFConfig, SSFModel, ssf.PREFIX),
    Method(adaptformer.NAME, AdaptFormerConfig, AdaptFormerModel, adaptformer.PREFIX),
)
CONFIGS: dict[str, type] = {method.config.__name__: method.config for method in METHODS}

__all__ = ["CONFIGS", "METHODS", "AdaptFormerConfig", "AdaptFormerLayer", "AdaptFormerModel", "Method", "SSFConfig",
           "SSFLayer", "SSFModel", "VisionTunerModel", "registered_peft_type"]

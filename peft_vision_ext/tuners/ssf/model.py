"""``SSFModel``: PEFT's tuner for SSF (registered under ``peft_type`` "SSF", parameters prefixed ``ssf_``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..base import VisionTunerModel
from .config import PREFIX
from .layer import SSFLayer


class SSFModel(VisionTunerModel):
    """Wraps every targeted layer in an :class:`SSFLayer` (a second adapter on a wrapped layer is added to it)."""

    prefix = PREFIX
    tuner_layer_cls = SSFLayer

    def _create_and_replace(self, peft_config: Any, adapter_name: str, target: nn.Module, target_name: str,
                            parent: nn.Module, current_key: str = "", **kwargs: Any) -> None:
        if isinstance(target, SSFLayer):
            target.update_layer(adapter_name, peft_config.init_weights)
            return
        new_module = SSFLayer(target, adapter_name, peft_config.init_weights)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added adapter is not trainable until set_adapter
        setattr(parent, target_name, new_module)

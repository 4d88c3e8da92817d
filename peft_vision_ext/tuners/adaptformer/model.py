"""``AdaptFormerModel``: PEFT's tuner for AdaptFormer (``peft_type`` "ADAPTFORMER", parameters ``adaptformer_``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..base import VisionTunerModel
from .config import PREFIX
from .layer import AdaptFormerLayer


class AdaptFormerModel(VisionTunerModel):
    """Wraps every targeted module in an :class:`AdaptFormerLayer` (a second adapter on a wrapped module is added
    to it)."""

    prefix = PREFIX
    tuner_layer_cls = AdaptFormerLayer

    def _create_and_replace(self, peft_config: Any, adapter_name: str, target: nn.Module, target_name: str,
                            parent: nn.Module, current_key: str = "", **kwargs: Any) -> None:
        options = dict(bottleneck=peft_config.bottleneck, scale=peft_config.scale, dropout=peft_config.dropout,
                       init_weights=peft_config.init_weights)
        if isinstance(target, AdaptFormerLayer):
            target.update_layer(adapter_name, **options)
            return
        new_module = AdaptFormerLayer(target, adapter_name, **options)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added adapter is not trainable until set_adapter
        setattr(parent, target_name, new_module)

"""AdaLoRA for nn.Conv2d: any kernel, stride, padding (and padding mode), dilation and groups.

Used on every supported PEFT version: added where PEFT has no AdaLoRA conv layer (< 0.20), replacing upstream's
``SVDConv2d`` where it has one (it ignores ``groups`` and materialises the full delta weight at every forward).
Parameter names and shapes match upstream for groups == 1, so adapters load both ways.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from peft.tuners.adalora.layer import AdaLoraLayer
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from . import functional


class AdaLoraConv2d(nn.Module, AdaLoraLayer):
    """SVD-parameterised adapter on a Conv2d (``lora_A``, ``lora_E``, ``lora_B`` as in upstream PEFT)."""

    def __init__(self, base_layer: nn.Conv2d, adapter_name: str, r: int = 0, lora_alpha: int = 1,
                 config: Any = None, **kwargs: Any) -> None:
        super().__init__()
        AdaLoraLayer.__init__(self, base_layer)
        self.get_base_layer().weight.requires_grad = False
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha, config=config, **kwargs)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, lora_dropout: float | None = None,
                     init_lora_weights: bool | None = None, config: Any = None, **kwargs: Any) -> None:
        # PEFT < 0.20 passes (lora_dropout, init_lora_weights) positionally; >= 0.20 passes config=.
        if config is not None:
            lora_dropout = config.lora_dropout
            init_lora_weights = config.init_lora_weights
            inference_mode = getattr(config, "inference_mode", False)
        else:
            lora_dropout = lora_dropout or 0.0
            init_lora_weights = True if init_lora_weights is None else init_lora_weights
            inference_mode = False
        if r < 0:
            raise ValueError(f"`r` should be a positive integer or 0, but the value passed is {r}")
        base = self.get_base_layer()
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.lora_dropout[adapter_name] = nn.Dropout(p=lora_dropout) if lora_dropout > 0.0 else nn.Identity()
        fan_in = base.in_channels // base.groups * base.kernel_size[0] * base.kernel_size[1]
        self.lora_A[adapter_name] = nn.Parameter(torch.randn(r, fan_in))
        self.lora_E[adapter_name] = nn.Parameter(torch.randn(r, 1))
        self.lora_B[adapter_name] = nn.Parameter(torch.randn(base.out_channels, r))
        # ranknum is not saved; it always equals the initial rank (the scale of the update).
        self.ranknum[adapter_name] = nn.Parameter(torch.full((1,), float(r)), requires_grad=False)
        self.scaling[adapter_name] = lora_alpha if lora_alpha > 0 else float(r)
        if init_lora_weights:
            self.reset_lora_parameters(adapter_name)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        try:
            self.set_adapter(self.active_adapters, inference_mode=inference_mode)
        except TypeError:  # PEFT < 0.18 has no inference_mode argument
            self.set_adapter(self.active_adapters)

    def _scale(self, adapter: str) -> torch.Tensor:
        return self.scaling[adapter] / (self.ranknum[adapter] + 1e-5)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        base = self.get_base_layer()
        return functional.delta_weight(self.lora_A[adapter], self.lora_E[adapter], self.lora_B[adapter],
                                       self._scale(adapter), base.weight.shape)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        base = self.get_base_layer()
        for adapter in adapter_names:
            if adapter not in self.lora_A:
                continue
            delta = self.get_delta_weight(adapter).to(base.weight.dtype)
            if safe_merge:
                merged = base.weight.data + delta
                if not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {adapter} seems to be broken")
                base.weight.data = merged
            else:
                base.weight.data += delta
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter in self.lora_A:
                base.weight.data -= self.get_delta_weight(adapter).to(base.weight.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        base = self.get_base_layer()
        adapter_forward = functional.factored_conv2d if base.groups == 1 else functional.grouped_conv2d
        for adapter in self.active_adapters:
            if adapter not in self.lora_A:
                continue
            lora_a = self.lora_A[adapter]
            if lora_a.shape[0] == 0:
                continue  # rank pruned to 0 by the allocator: the adapter contributes nothing
            x_adapter = self._cast_input_dtype(x, lora_a.dtype) if hasattr(self, "_cast_input_dtype") else x
            update = adapter_forward(self.lora_dropout[adapter](x_adapter), base, lora_a, self.lora_E[adapter],
                                     self.lora_B[adapter], self._scale(adapter))
            result = result + update.to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "adalora." + super().__repr__()

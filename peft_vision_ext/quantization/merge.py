"""Merging adapters trained on bitsandbytes layers: into a full-precision model (default) or re-quantized."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import QuantizationError
from ..layers.cpu_packing import keep_unpacked
from .bnb_layers import dequantized_linear, dequantized_weight, is_quantized


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _delta_weight(module: nn.Module, adapter: str) -> torch.Tensor:
    if hasattr(module, "get_delta_weight"):
        return module.get_delta_weight(adapter)
    # AdaLoRA's bitsandbytes layers have no get_delta_weight in PEFT; its SVDLinear computes exactly this.
    delta = module.lora_B[adapter] @ (module.lora_A[adapter] * module.lora_E[adapter])
    return delta * module.scaling[adapter] / (module.ranknum[adapter] + 1e-5)


def merge_and_unload(peft_model: Any, requantize: bool = False) -> nn.Module:
    """Merge the active adapters of a PEFT model built on bitsandbytes layers and return the base model.

    ``requantize=False`` (default): every bitsandbytes layer comes back as an fp32 ``nn.Linear`` holding the
    dequantized weight plus the adapter's delta, so the merged model computes what the adapted one did (up to
    fp32 rounding); the quantized flags are removed. ``requantize=True``: PEFT's own merge, which quantizes the
    merged weight again (smaller; outputs differ by that re-quantization error). Adapters whose layers have no
    ``get_delta_weight`` for bitsandbytes (refused by the compatibility matrix) raise before anything changes.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuner = peft_model.base_model
    model = tuner.model
    keep_unpacked(model)  # weights bitsandbytes repacked for its CPU kernel would be read in the wrong layout
    if requantize:
        return peft_model.merge_and_unload()
    adapters = list(tuner.active_adapters)
    wrapped = [(name, module) for name, module in model.named_modules()
               if isinstance(module, BaseTunerLayer) and is_quantized(module.get_base_layer())]
    for name, module in wrapped:
        if not (hasattr(module, "get_delta_weight") or hasattr(module, "lora_E")):
            raise QuantizationError(f"{type(module).__name__} at {name}: merging this method into a dequantized model "
                                    "is not supported (only additive LoRA/AdaLoRA deltas are); nothing was merged.")
    merged = {}
    with torch.no_grad():
        for name, module in wrapped:  # every merged layer is computed first: a failure leaves the model as it was
            base = module.get_base_layer()
            weight = dequantized_weight(base)
            for adapter in adapters:
                if adapter in getattr(module, "lora_A", {}):
                    weight = weight + _delta_weight(module, adapter).float().to(weight.device)
            merged[name] = dequantized_linear(base, weight)
    for name, linear in merged.items():
        _replace(model, name, linear)
    base_model = dequantize(peft_model.merge_and_unload())  # the full-precision adapters and modules_to_save
    for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(base_model, flag, False):
            try:
                setattr(base_model, flag, False)
            except AttributeError:
                pass
    return base_model


@torch.no_grad()
def dequantize(model: nn.Module) -> nn.Module:
    """Replace every bitsandbytes Linear of ``model`` with its fp32 equivalent, in place."""
    keep_unpacked(model)
    for name, module in list(model.named_modules()):
        if is_quantized(module):
            _replace(model, name, dequantized_linear(module))
    return model

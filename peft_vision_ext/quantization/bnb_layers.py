"""bitsandbytes layers from and back to ``nn.Linear`` (bitsandbytes is imported only when a layer is built)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..layers.cpu_packing import is_packed, unpack
from ..layers.kinds import LayerKind, layer_kind
from .bnb_patches import patch_bitsandbytes


def quantized_linear(weight: torch.Tensor, bias: torch.Tensor | None, bits: int, quant_type: str = "nf4",
                     double_quant: bool = True, compute_dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu", int8_threshold: float = 6.0) -> nn.Module:
    """A bitsandbytes Linear holding ``weight`` quantized (bitsandbytes packs it when the layer moves to a device)."""
    import bitsandbytes as bnb

    patch_bitsandbytes()  # standard layout kept at eval forwards (AVX512-BF16 CPUs); buffered frozen forward
    out_features, in_features = weight.shape
    data = weight.detach().to("cpu", torch.float32).clone()
    if bits == 4:
        layer = bnb.nn.Linear4bit(in_features, out_features, bias=bias is not None, compute_dtype=compute_dtype,
                                  compress_statistics=double_quant, quant_type=quant_type, device="cpu")
        layer.weight = bnb.nn.Params4bit(data, requires_grad=False, compress_statistics=double_quant,
                                         quant_type=quant_type)
    else:
        layer = bnb.nn.Linear8bitLt(in_features, out_features, bias=bias is not None, has_fp16_weights=False,
                                    threshold=int8_threshold, device="cpu")
        layer.weight = bnb.nn.Int8Params(data, requires_grad=False, has_fp16_weights=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().to("cpu", torch.float32).clone(), requires_grad=False)
    return layer.to(device)


def is_quantized(module: nn.Module) -> bool:
    return layer_kind(module) in (LayerKind.BNB_8BIT, LayerKind.BNB_4BIT)


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The full-precision (fp32) weight a bitsandbytes Linear computes with (also when bitsandbytes repacked it for
    its AVX512-BF16 CPU kernel: read from an unpacked copy, the layer itself is left as it is)."""
    from peft.utils.integrations import dequantize_bnb_weight

    if is_packed(module):
        module = copy.deepcopy(module)
        unpack(module)

    return dequantize_bnb_weight(module.weight, getattr(module, "state", None)).float()


def dequantized_linear(module: nn.Module, weight: torch.Tensor | None = None) -> nn.Linear:
    """An fp32 ``nn.Linear`` equal to the bitsandbytes layer ``module`` (or holding ``weight`` instead)."""
    weight = dequantized_weight(module) if weight is None else weight
    linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                       device=weight.device, dtype=torch.float32)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if module.bias is not None:
            linear.bias.copy_(module.bias.float())
    linear.requires_grad_(False)
    return linear


def storage_bytes(model: nn.Module) -> int:
    """Bytes the weights really occupy: parameters and buffers as stored (packed for 4-bit), plus the quantization
    statistics bitsandbytes keeps beside them (absmax, nested absmax, codebooks; int8 row scales)."""
    total = sum(t.numel() * t.element_size() for t in model.parameters())
    total += sum(t.numel() * t.element_size() for t in model.buffers())
    for module in model.modules():
        if not is_quantized(module):
            continue
        state = getattr(module.weight, "quant_state", None)
        total += _tensor_bytes(state)
        scales = getattr(module.weight, "SCB", None)
        if scales is None:
            scales = getattr(getattr(module, "state", None), "SCB", None)
        total += _tensor_bytes(scales)
    return total


def _tensor_bytes(value: Any, seen: set[int] | None = None) -> int:
    seen = set() if seen is None else seen
    if value is None or id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in value)
    if hasattr(value, "__dict__"):
        return sum(_tensor_bytes(v, seen) for v in vars(value).values())
    return 0

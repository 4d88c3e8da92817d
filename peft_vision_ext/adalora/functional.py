"""The math of AdaLoRA on convolutions, apart from the module wrapper.

AdaLoRA factors an update as ``B @ diag(E) @ A`` (Zhang et al., 2023). For a Conv2d with weight
``(out, in / groups, kh, kw)`` we keep upstream PEFT's parameter layout so checkpoints are interchangeable:
``A: (r, in / groups * kh * kw)``, ``E: (r, 1)``, ``B: (out, r)``; the delta weight is ``B @ (A * E)`` reshaped
to the conv weight's shape, times ``scaling / (ranknum + 1e-5)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def delta_weight(lora_a: torch.Tensor, lora_e: torch.Tensor, lora_b: torch.Tensor, scale: torch.Tensor | float,
                 weight_shape: torch.Size) -> torch.Tensor:
    """``scale * B @ (A * E)`` as a conv weight of ``weight_shape``."""
    return (lora_b @ (lora_a * lora_e) * scale).reshape(weight_shape)


def pad_for(conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...] | str]:
    """Input and padding argument for F.conv2d that honour ``conv.padding_mode`` (reflect, replicate, circular)."""
    if conv.padding_mode != "zeros":
        return F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode), (0, 0)
    return x, conv.padding


def factored_conv2d(x: torch.Tensor, conv: nn.Conv2d, lora_a: torch.Tensor, lora_e: torch.Tensor,
                    lora_b: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """The adapter's output for a groups == 1 conv without materialising the full delta weight.

    conv(x, (A * E) as (r, in, kh, kw)) gives r channels at the conv's stride/padding/dilation; a 1x1 conv
    with ``B`` maps them to ``out``. Cost ~ r * (in * kh * kw + out) per pixel instead of out * in * kh * kw.
    """
    rank = lora_a.shape[0]
    down = (lora_a * lora_e).reshape(rank, conv.in_channels, *conv.kernel_size)
    x, padding = pad_for(conv, x)
    hidden = F.conv2d(x, down, stride=conv.stride, padding=padding, dilation=conv.dilation)
    up = (lora_b * scale).reshape(conv.out_channels, rank, 1, 1)
    return F.conv2d(hidden, up)


def grouped_conv2d(x: torch.Tensor, conv: nn.Conv2d, lora_a: torch.Tensor, lora_e: torch.Tensor,
                   lora_b: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """The adapter's output for a grouped/depthwise conv: its delta weight is small (in / groups channels), so
    materialising it and running one grouped conv is both exact and the fastest way."""
    weight = delta_weight(lora_a, lora_e, lora_b, scale, conv.weight.shape)
    x, padding = pad_for(conv, x)
    return F.conv2d(x, weight, stride=conv.stride, padding=padding, dilation=conv.dilation, groups=conv.groups)

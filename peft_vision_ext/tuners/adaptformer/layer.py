"""``AdaptFormerLayer``: a bottleneck branch beside one module, added to its output."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ...layers.kinds import QUANTIZED_KINDS, is_linear, layer_kind


def _channels(module: nn.Module, side: str) -> int | None:
    """A module's declared input (``side="in"``) or output channels: ``in_channels`` / ``in_features`` (also on
    composite layers such as timm's SelectiveKernel), transformers Conv1D's weight (in, out)."""
    for attribute in (f"{side}_channels", f"{side}_features"):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return value
    if is_linear(module):  # transformers Conv1D
        return module.weight.shape[0 if side == "in" else 1]
    return None


def _first_and_last_layers(module: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    # modules() lists a composite layer before the layers inside it: its own in_channels is the block's input
    found = [m for m in module.modules() if m is not module and _channels(m, "in") is not None
             and (is_linear(m) or isinstance(m, nn.Conv2d) or layer_kind(m) in QUANTIZED_KINDS
                  or any(isinstance(inner, nn.Conv2d) for inner in m.modules()))]
    return (found[0], found[-1]) if found else None


def geometry(module: nn.Module) -> tuple[int, int, bool]:
    """(input channels, output channels, whether channels are dimension 1 of a 4-D input: a conv block) of a module
    an adapter can sit beside; ValueError naming the module type otherwise."""
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim, module.embed_dim, False
    if isinstance(module, nn.Embedding):
        raise ValueError("AdaptFormer cannot sit beside Embedding layers: their input is indices, not features. "
                         "Leave them out of target_modules.")
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)):
        channels = (module.normalized_shape[-1] if isinstance(module, nn.LayerNorm)
                    else getattr(module, "num_channels", None) or module.num_features)
        return channels, channels, not isinstance(module, nn.LayerNorm)
    if is_linear(module) or isinstance(module, nn.Conv2d) or layer_kind(module) in QUANTIZED_KINDS:
        return _channels(module, "in"), _channels(module, "out"), isinstance(module, nn.Conv2d)
    ends = _first_and_last_layers(module)
    if ends is None:
        raise ValueError(f"AdaptFormer cannot sit beside {type(module).__name__}: it holds no Linear or Conv2d layer "
                         "to read its input and output channels from. Target an MLP block, a residual conv block or a "
                         "layer.")
    first, last = ends
    convolutional = isinstance(first, nn.Conv2d) or hasattr(first, "in_channels")
    return _channels(first, "in"), _channels(last, "out"), convolutional


class AdaptFormerLayer(nn.Module, BaseTunerLayer):
    """Wraps one module: ``module(x) + scale * up(relu(down(x)))`` per adapter (1x1 convs on a conv block, strided
    to the block's output size)."""

    adapter_layer_names = ("adaptformer_down", "adaptformer_up")
    other_param_names = ("scale", "dropout_p")

    def __init__(self, base_layer: nn.Module, adapter_name: str, bottleneck: int = 8, scale: float = 0.1,
                 dropout: float = 0.0, init_weights: bool = True, **kwargs: Any) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adaptformer_down = nn.ModuleDict()
        self.adaptformer_up = nn.ModuleDict()
        self.scale: dict[str, float] = {}
        self.dropout_p: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.in_channels, self.out_channels, self.convolutional = geometry(base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, bottleneck, scale, dropout, init_weights)

    def update_layer(self, adapter_name: str, bottleneck: int, scale: float, dropout: float = 0.0,
                     init_weights: bool = True) -> None:
        if self.convolutional:
            down = nn.Conv2d(self.in_channels, bottleneck, 1)
            up = nn.Conv2d(bottleneck, self.out_channels, 1)
        else:
            down = nn.Linear(self.in_channels, bottleneck)
            up = nn.Linear(bottleneck, self.out_channels)
        nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))  # AdaptFormer's (and LoRA's) down-projection init
        nn.init.zeros_(down.bias)
        if init_weights:  # the branch adds nothing until trained
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        weight = next((p for p in self.base_layer.parameters() if p.is_floating_point()), None)
        if weight is not None and weight.device.type != "meta":
            down.to(weight.device)
            up.to(weight.device)
        self.adaptformer_down[adapter_name] = down
        self.adaptformer_up[adapter_name] = up
        self.scale[adapter_name] = scale
        self.dropout_p[adapter_name] = dropout
        self.set_adapter(self.active_adapters)

    def _branch(self, name: str, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        down, up = self.adaptformer_down[name], self.adaptformer_up[name]
        x = x.to(down.weight.dtype)
        if self.convolutional:  # strided like the block (its output may be smaller than its input)
            stride = max(1, x.shape[-1] // output.shape[-1])
            hidden = F.conv2d(x, down.weight, down.bias, stride=stride)
        else:
            hidden = down(x)
        hidden = F.dropout(F.relu(hidden), self.dropout_p[name], self.training)
        return (self.scale[name] * up(hidden)).to(output.dtype)

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        output = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return output
        main = output[0] if isinstance(output, tuple) else output  # nn.MultiheadAttention: (output, weights)
        for name in self.active_adapters:
            if name in self.adaptformer_down:
                main = main + self._branch(name, x, main)
        return (main, *output[1:]) if isinstance(output, tuple) else main

    # ------------------------------------------------------------------------------------------ merging
    def merge_problem(self, adapter_names: list[str] | None = None) -> str | None:
        return ("AdaptFormer's branch is non-linear (a ReLU between its projections) and sits beside the module: it "
                "cannot move into the module's weights; keep it unmerged (two small projections per block)")

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(f"AdaptFormer cannot merge into {type(self.get_base_layer()).__name__}: "
                         f"{self.merge_problem()}.")

    def unmerge(self) -> None:
        return None

    def __repr__(self) -> str:
        return "adaptformer." + super().__repr__()

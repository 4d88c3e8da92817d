"""``SSFLayer``: the wrapper that scales and shifts one layer's output channels, merges into it and unmerges."""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ...layers.kinds import (
    NORM_ACT_CHILDREN,
    NORM_TYPES,
    QUANTIZED_KINDS,
    is_linear,
    layer_kind,
    norm_then_activation,
    plain_norm,
)
from .functional import merged_bias, scale_shift, scaled_weight, unmerged_bias, unscaled_weight

#: SSF's random start in the paper (init_weights=False): scale ~ N(1, 0.02), shift ~ N(0, 0.02).
PAPER_INIT_STD = 0.02


def _channels_first_norm(module: nn.Module) -> bool:
    # timm LayerNorm2d / RmsNorm2d permute NCHW input; transformers ConvNeXt-style norms say data_format
    return getattr(module, "data_format", "") == "channels_first" or type(module).__name__.endswith("2d")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, NORM_TYPES) or ("Norm" in type(module).__name__
                                              and getattr(getattr(module, "weight", None), "ndim", 0) == 1)


def output_channels(module: nn.Module) -> tuple[int, int]:
    """(number of output channels, their dimension in the output) of a layer SSF can follow; ValueError otherwise."""
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim, -1
    if is_linear(module) or layer_kind(module) in QUANTIZED_KINDS:
        return (module.out_features if hasattr(module, "out_features") else module.weight.shape[1]), -1
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                           nn.ConvTranspose3d)):
        return module.out_channels, 1
    if isinstance(module, nn.Embedding):
        return module.embedding_dim, -1
    if isinstance(module, (nn.GroupNorm,)):
        return module.num_channels, 1
    if isinstance(module, nn.modules.batchnorm._NormBase):  # BatchNorm*, InstanceNorm*, SyncBatchNorm
        return module.num_features, 1
    if _is_norm(module):
        shape = getattr(module, "normalized_shape", None)
        if shape is not None and len(tuple(shape)) != 1:
            raise ValueError(f"SSF: {type(module).__name__} normalises over {tuple(shape)}; SSF follows norms over "
                             "one channel dimension only. Leave it out of target_modules.")
        channels = tuple(shape)[0] if shape is not None else module.weight.shape[0]
        return channels, 1 if _channels_first_norm(module) else -1
    raise ValueError(f"SSF cannot follow {type(module).__name__} layers: it scales and shifts the output channels of "
                     "Linear, Conv, norm, Embedding, nn.MultiheadAttention and bitsandbytes Linear layers. Leave it "
                     "out of target_modules.")


def _merge_target(module: nn.Module) -> tuple[nn.Module, int]:
    """(the module whose weight and bias a merge rewrites, the weight's output-channel dimension)."""
    if isinstance(module, nn.MultiheadAttention):
        return module.out_proj, 0
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return module, 1  # weight (in, out / groups, *kernel)
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers Conv1D: weight (in, out)
        return module, 1
    return module, 0


class SSFLayer(nn.Module, BaseTunerLayer):
    """Wraps one layer: ``base_layer(x) * scale + shift`` along its output channels, per adapter."""

    adapter_layer_names = ("ssf_scale", "ssf_shift")

    def __init__(self, base_layer: nn.Module, adapter_name: str, init_weights: bool = True, **kwargs: Any) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.ssf_scale = nn.ParameterDict()
        self.ssf_shift = nn.ParameterDict()
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        #: adapters whose merge gave the layer the bias it lacked (unmerging removes it again)
        self._created_bias: list[str] = []
        self.channels, self.channel_dim = output_channels(base_layer)
        #: timm norm + activation layers: the scale and shift go between the norm and its activation (as SSF after
        #: the norm means, and mergeable into its affine parameters)
        self.between_norm_and_activation = norm_then_activation(base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, init_weights)

    def update_layer(self, adapter_name: str, init_weights: bool = True) -> None:
        weight = next(iter(self.base_layer.parameters()), None)
        device = weight.device if weight is not None and weight.device.type != "meta" else None
        scale = torch.ones(self.channels, device=device)
        shift = torch.zeros(self.channels, device=device)
        if not init_weights:
            scale.normal_(1.0, PAPER_INIT_STD)
            shift.normal_(0.0, PAPER_INIT_STD)
        self.ssf_scale[adapter_name] = nn.Parameter(scale)
        self.ssf_shift[adapter_name] = nn.Parameter(shift)
        self.set_adapter(self.active_adapters)

    # ------------------------------------------------------------------------------------------ forward
    def _scale_shift(self, output: torch.Tensor, names: list[str]) -> torch.Tensor:
        if output.shape[self.channel_dim] != self.channels:
            found = output.shape[self.channel_dim]
            raise RuntimeError(f"SSF on {type(self.base_layer).__name__}: its output has {found} channels along "
                               f"dimension {self.channel_dim}, the adapter {self.channels}.")
        for name in names:
            output = scale_shift(output, self.ssf_scale[name], self.ssf_shift[name], self.channel_dim)
        return output

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        names = [name for name in self.active_adapters if name in self.ssf_scale]
        if self.between_norm_and_activation and names:
            return self._norm_scale_shift_activation(x, names)
        output = self.base_layer(x, *args, **kwargs)
        if isinstance(output, tuple):  # nn.MultiheadAttention: (attention output, weights)
            return (self._scale_shift(output[0], names), *output[1:])
        return self._scale_shift(output, names)

    def _norm_scale_shift_activation(self, x: torch.Tensor, names: list[str]) -> torch.Tensor:
        base = self.base_layer
        after = [base._modules[name] for name in NORM_ACT_CHILDREN]
        for name in NORM_ACT_CHILDREN:  # the norm alone: its forward calls these two children last
            base._modules[name] = nn.Identity()
        try:
            output = base(x)
        finally:
            for name, module in zip(NORM_ACT_CHILDREN, after, strict=True):
                base._modules[name] = module
        output = self._scale_shift(output, names)
        for module in after:
            output = module(output)
        return output

    # ------------------------------------------------------------------------------------------ merging
    def merge_problem(self, adapter_names: list[str] | None = None) -> str | None:
        """Why this layer cannot take its adapters by merging (None: it can, exactly)."""
        base = self.get_base_layer()
        if layer_kind(base) in QUANTIZED_KINDS:
            return ("a bitsandbytes layer holds quantized weights: merge on a full-precision copy (load the base model "
                    "without quantization, load the adapter into it, then merge_and_unload)")
        if _is_norm(base) and getattr(base, "weight", None) is None:
            return f"{type(base).__name__} has no affine parameters to merge into"
        if isinstance(base, NORM_TYPES) and not plain_norm(base) and not self.between_norm_and_activation:
            extras = [name for name, child in base.named_children()
                      if not isinstance(child, (nn.Identity, nn.Dropout))]
            return (f"{type(base).__name__} applies {', '.join(extras)} after normalising, so a scale and shift of its "
                    "output cannot move into its affine parameters")
        if isinstance(base, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) and base.groups > 1:
            return "grouped transposed convolutions are not merged"
        return None

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        names = [name for name in (adapter_names or self.active_adapters)
                 if name in self.ssf_scale and name not in self.merged_adapters]
        if not names:
            return
        problem = self.merge_problem(names)
        if problem is not None:
            raise ValueError(f"SSF cannot merge into {type(self.get_base_layer()).__name__}: {problem}.")
        for name in names:
            scale, shift = self.ssf_scale[name].detach(), self.ssf_shift[name].detach()
            self._merge_one(name, scale, shift, safe_merge)
            self.merged_adapters.append(name)

    def _merge_one(self, name: str, scale: torch.Tensor, shift: torch.Tensor, safe_merge: bool) -> None:
        base = self.get_base_layer()
        with torch.no_grad():
            if isinstance(base, nn.Embedding):  # a row lookup: scale and shift every row
                merged = scaled_weight(base.weight, scale, 1) + shift.to(base.weight.dtype)
                self._check_finite(merged, safe_merge)
                base.weight.copy_(merged)
                return
            owner, dim = _merge_target(base)
            weight = scaled_weight(owner.weight, scale, dim)
            bias = merged_bias(owner.bias, scale, shift)
            self._check_finite(weight, safe_merge)
            owner.weight.copy_(weight)
            if owner.bias is None:
                owner.bias = nn.Parameter(bias.to(owner.weight.dtype), requires_grad=False)
                self._created_bias.append(name)
            else:
                owner.bias.copy_(bias)

    @staticmethod
    def _check_finite(weight: torch.Tensor, safe_merge: bool) -> None:
        if safe_merge and not torch.isfinite(weight).all():
            raise ValueError("NaNs or infinities detected in the merged weights. The adapter seems to be broken.")

    def unmerge(self) -> None:
        if not self.merged:
            return
        base = self.get_base_layer()
        with torch.no_grad():
            while self.merged_adapters:
                name = self.merged_adapters.pop()
                scale, shift = self.ssf_scale[name].detach(), self.ssf_shift[name].detach()
                if isinstance(base, nn.Embedding):
                    base.weight.copy_(unscaled_weight(base.weight - shift.to(base.weight.dtype), scale, 1))
                    continue
                owner, dim = _merge_target(base)
                owner.weight.copy_(unscaled_weight(owner.weight, scale, dim))
                if name in self._created_bias:
                    self._created_bias.remove(name)
                    owner.bias = None
                else:
                    owner.bias.copy_(unmerged_bias(owner.bias, scale, shift))

    def __repr__(self) -> str:
        return "ssf." + super().__repr__()

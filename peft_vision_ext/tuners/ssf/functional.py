"""SSF's math, apart from the module wrapper: a per-channel affine map of a layer's output, and its exact merge into
the layer's own parameters (the deployed model then costs nothing extra)."""

from __future__ import annotations

import torch


def along(vector: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """``vector`` shaped to broadcast along dimension ``dim`` of an ``ndim``-dimensional tensor."""
    dim = dim % ndim
    return vector.reshape([-1 if axis == dim else 1 for axis in range(ndim)])


def scale_shift(y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, dim: int) -> torch.Tensor:
    """``y * scale + shift`` with both vectors along channel dimension ``dim`` of ``y``."""
    return y * along(scale.to(y.dtype), dim, y.ndim) + along(shift.to(y.dtype), dim, y.ndim)


def scaled_weight(weight: torch.Tensor, scale: torch.Tensor, dim: int) -> torch.Tensor:
    """A layer's weight with output channel ``c`` (along ``dim``) multiplied by ``scale[c]``."""
    return weight * along(scale.to(weight.dtype), dim, weight.ndim)


def unscaled_weight(weight: torch.Tensor, scale: torch.Tensor, dim: int) -> torch.Tensor:
    return weight / along(scale.to(weight.dtype), dim, weight.ndim)


def merged_bias(bias: torch.Tensor | None, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The bias after the merge: ``scale * bias + shift`` (``shift`` for a layer without one)."""
    return shift.to(scale.dtype).clone() if bias is None else bias * scale.to(bias.dtype) + shift.to(bias.dtype)


def unmerged_bias(bias: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return (bias - shift.to(bias.dtype)) / scale.to(bias.dtype)

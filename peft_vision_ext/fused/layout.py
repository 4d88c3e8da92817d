"""Where the query, key and value rows of a fused projection are, read from the model's structure.

A fused projection computes several attention inputs with one matrix: timm's ``qkv`` (q, k, v stacked along the
output rows, reshaped as ``(3, heads, head_dim)``), PVT/Twins' ``kv`` (k, v) and ``nn.MultiheadAttention``'s
``in_proj_weight`` (q, k, v). A layer counts as fused when its role (see :mod:`peft_vision_ext.presets.roles`) says
so; its slices are then checked against the attention block's head count, and a layer whose slices cannot be
determined is refused rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import FusedSlicesError
from ..families.roles import Role, _features, linear_role
from ..layers.kinds import base_layer, is_linear

#: Slices along the output rows, by role of the fused layer.
PARTS = {"qkv": ("q", "k", "v"), "kv": ("k", "v"), "mha": ("q", "k", "v")}


@dataclass(frozen=True)
class FusedLayout:
    parts: tuple[str, ...]  # the slices in the order of the output rows
    width: int  # output rows per slice
    in_features: int
    mha: bool = False  # nn.MultiheadAttention: its out_proj is adapted through the same PEFT layer

    def start(self, part: str) -> int:
        return self.parts.index(part) * self.width


def fused_layout(model: nn.Module, name: str) -> FusedLayout | None:
    """The slices of the fused projection at ``name``; ``None`` when it is not one. Raises
    :class:`FusedSlicesError` for a fused layer whose slices cannot be told from the model's structure."""
    module = base_layer(model.get_submodule(name))
    if isinstance(module, nn.MultiheadAttention):
        if not module._qkv_same_embed_dim:
            raise FusedSlicesError(f"{name}: this nn.MultiheadAttention keeps q, k and v in separate weights "
                                   "(kdim/vdim differ from embed_dim), which PEFT's LoRA cannot wrap. Target its "
                                   "MLP instead (preset 'mlp').")
        return FusedLayout(PARTS["mha"], module.embed_dim, module.embed_dim, mha=True)
    if not is_linear(module):
        return None
    role = linear_role(model, name)
    if role not in (Role.QKV, Role.KV):
        return None
    parts = PARTS[role.value]
    in_features, out_features = _features(module)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    # timm / torchvision name it num_heads; transformers (SAM, TimeSformer) num_attention_heads
    heads = getattr(parent, "num_heads", None)
    heads = heads if heads is not None else getattr(parent, "num_attention_heads", None)
    width, remainder = divmod(out_features, len(parts))
    if remainder or not isinstance(heads, int) or heads <= 0 or width % heads:
        found = f"num_heads={heads!r}" if heads is not None else f"no num_heads on {type(parent).__name__}"
        raise FusedSlicesError(
            f"{name}: a fused {'/'.join(parts)} projection with {out_features} outputs, but its slices cannot be "
            f"determined from the model's structure ({found}; expected {len(parts)} equal slices, each a whole "
            "number of heads). LoRA cannot adapt its slices separately: use peft_vision_ext.use_fused_slices(config, "
            "'whole') to adapt the whole layer, or pass target_modules without it.")
    return FusedLayout(parts, width, in_features)


"""A LoRA factor of which only some blocks train: the rest of the matrix is a fixed zero.

LoRA on the q and v slices of a fused ``qkv`` layer is, in PEFT's own format, a standard LoRA of rank 2r on the
whole layer whose B is block-structured: B_q in the query rows and the first r columns, B_v in the value rows and the
last r columns, zeros elsewhere. :class:`BlockFactor` stands in for ``lora_A`` / ``lora_B`` so that exactly those
blocks are parameters (the trainable count is that of separate q and v projections), while everything PEFT reads
(``.weight`` in merges and dtype checks, the forward, the state dict) sees the full matrix. Saved adapters are plain
PEFT LoRA; loading one back checks that the fixed entries are zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: (first row, end row, first column, end column) of a trainable block.
Block = tuple[int, int, int, int]


class BlockFactor(nn.Module):
    """``weight`` of shape ``(out_features, in_features)``: the ``blocks`` are parameters, every other entry is 0."""

    bias = None  # PEFT's LoRA factors are bias-free unless lora_bias (refused with fused slices)

    def __init__(self, weight: torch.Tensor, blocks: Sequence[Block]):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.spans: tuple[Block, ...] = tuple(blocks)
        # Direct parameters, not a ParameterList: a child module would add its own keys to the state dict.
        for index, (r0, r1, c0, c1) in enumerate(self.spans):
            self.register_parameter(f"block{index}", nn.Parameter(weight.detach()[r0:r1, c0:c1].clone(),
                                                                  requires_grad=weight.requires_grad))
        # dtype and device of the full matrix when no block trains (an out_proj left out by the preset).
        self.register_buffer("reference", weight.detach().new_zeros(()), persistent=False)

    @property
    def blocks(self) -> list[nn.Parameter]:
        return [getattr(self, f"block{index}") for index in range(len(self.spans))]

    @property
    def weight(self) -> torch.Tensor:
        """The full matrix, differentiable in the blocks."""
        blocks = self.blocks
        anchor = blocks[0] if blocks else self.reference
        full = anchor.new_zeros(self.out_features, self.in_features)
        for (r0, r1, c0, c1), block in zip(self.spans, blocks):
            full[r0:r1, c0:c1] = block
        return full

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, trainable blocks={list(self.spans)}"

    # The state dict holds the full matrix under ``weight``, exactly what a standard LoRA factor saves.
    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        blocks = self.blocks
        if any(getattr(block, "_fsdp_flattened", False) for block in blocks):
            # FSDP1's state-dict hooks require every parameter they manage under its own name (they assert on a
            # missing one); the hook sharded-save drops these keys again before an adapter is written.
            for index, block in enumerate(blocks):
                destination[f"{prefix}block{index}"] = block if keep_vars else block.detach()
            whole = all(tuple(block.shape) == (r1 - r0, c1 - c0) for block, (r0, r1, c0, c1) in zip(blocks, self.spans))
            if not whole:  # FSDP1 with rank0_only: this process holds flat shards, its state dict is dropped
                return
        weight = self.weight
        destination[prefix + "weight"] = weight if keep_vars else weight.detach()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        value = state_dict[key]
        if tuple(value.shape) != (self.out_features, self.in_features):
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(value.shape)}, the fused-"
                              f"slices factor has shape {(self.out_features, self.in_features)}.")
            return
        if value.device.type != "meta":
            outside = value.detach().clone()
            for r0, r1, c0, c1 in self.spans:
                outside[r0:r1, c0:c1] = 0
            if bool(outside.ne(0).any()):
                error_msgs.append(
                    f"{key} has nonzero entries outside the trainable slices, so it was not saved in the fused-slices "
                    "layout (a whole-layer LoRA of the same rank?). Load it without the plugin's fused slices: "
                    "remove fused_slices.json from the adapter folder, or use peft_vision_ext.use_fused_slices(config, "
                    "'whole').")
                return
        assign = bool(local_metadata.get("assign_to_params_buffers", False))
        with torch.no_grad():
            for index, (r0, r1, c0, c1) in enumerate(self.spans):
                piece = value[r0:r1, c0:c1]
                old = getattr(self, f"block{index}")
                if assign or old.device.type == "meta":
                    replacement = nn.Parameter(piece.detach().clone(), requires_grad=old.requires_grad)
                    setattr(self, f"block{index}", replacement)
                else:
                    old.copy_(piece)
        if assign or self.reference.device.type == "meta":
            self.reference = value.detach().new_zeros(())

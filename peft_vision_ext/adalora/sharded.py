"""AdaLoRA's rank allocation on sharded parameters (FSDP2 / HSDP DTensors).

PEFT's ``RankAllocator`` assumes every process holds whole tensors: under ``fully_shard`` its ``mask_to_budget`` fails
(``.tolist() is not supported for tensor subclasses, got DTensor``), and a version that gathered the adapter would
move every factor to every process at every step. Here each process keeps the importance statistics of the rows it
holds (sensitivity and uncertainty are element-wise, so they need no communication), reduces them to one score per
singular value, and a single all-reduce of ``3 x total initial rank`` floats gives every process the same scores, so
every process masks the same singular values and records the same rank pattern. The formulas are PEFT's
(``RankAllocator._element_score`` / ``_combine_ipt``): the score of singular value i of a layer is
``s(E_i) + mean_j s(A_ij) + mean_k s(B_ki)``.

Parameters that are not sharded (a module left out of ``fully_shard``) are counted once, from the group's first
process. The hook ``adalora-sharded-allocation`` routes ``RankAllocator`` here whenever an adapter parameter is a
DTensor; plain models keep PEFT's code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers.shards import RowShard, is_dtensor, is_fsdp1, local_tensor, row_shard

_ROWS = {"lora_E": 0, "lora_A": 1, "lora_B": 2}  # rows of the score buffer


def _adapter_parameters(model: nn.Module, adapter: str) -> list[tuple[str, nn.Parameter]]:
    """The parameters PEFT's ``RankAllocator.update_ipt`` tracks, in model order (the same on every process)."""
    return [(name, p) for name, p in model.named_parameters() if "lora_" in name and adapter in name]


def has_sharded_adapter(model: nn.Module, adapter: str) -> bool:
    """True for FSDP2-sharded adapters (DTensors); raises for FSDP1, whose flat shards lose the factors' shapes."""
    parameters = _adapter_parameters(model, adapter)
    if any(getattr(p, "_fsdp_flattened", False) for _, p in parameters) or is_fsdp1(model):
        raise RuntimeError(
            "AdaLoRA rank allocation under FSDP1 (FullyShardedDataParallel) is not supported: FSDP1 flattens the "
            "adapter's factors into flat shards, so their rows and columns (AdaLoRA's singular values) cannot be "
            "scored. Shard with FSDP2 instead: peft_vision_ext.distributed.shard_model(model) or "
            "torch.distributed.fsdp.fully_shard; with accelerate, fsdp_version: 2 in the FSDP config.")
    return any(is_dtensor(p) for _, p in parameters)


def update_ipt(allocator: Any, model: nn.Module) -> None:
    """PEFT's ``update_ipt`` on the local rows: sensitivity ``|p * grad|`` and its two moving averages."""
    for name, parameter in _adapter_parameters(model, allocator.adapter_name):
        if parameter.grad is None:
            raise RuntimeError(
                f"AdaLoRA update_and_allocate: {name} has no gradient. Call it after loss.backward() and "
                "optimizer.step(), before optimizer.zero_grad() (AdaLoraCallback does this under Trainer).")
        with torch.no_grad():
            local, grad = local_tensor(parameter), local_tensor(parameter.grad)
            if name not in allocator.ipt:
                allocator.ipt[name] = torch.zeros_like(local)
                allocator.exp_avg_ipt[name] = torch.zeros_like(local)
                allocator.exp_avg_unc[name] = torch.zeros_like(local)
            ipt = (local * grad).abs()
            allocator.ipt[name] = ipt
            allocator.exp_avg_ipt[name] = allocator.beta1 * allocator.exp_avg_ipt[name] + (1 - allocator.beta1) * ipt
            allocator.exp_avg_unc[name] = (allocator.beta2 * allocator.exp_avg_unc[name]
                                           + (1 - allocator.beta2) * (ipt - allocator.exp_avg_ipt[name]).abs())


def _layer_offsets(parameters: list[tuple[str, nn.Parameter]]) -> tuple[dict[str, tuple[int, int]], int]:
    """Each layer's slice of the concatenated singular values, in PEFT's order (first lora_A/lora_B seen)."""
    offsets: dict[str, tuple[int, int]] = {}
    total = 0
    for name, parameter in parameters:
        for factor in ("lora_A", "lora_B"):
            if f"{factor}." in name:
                layer = name.replace(factor, "%s")
                if layer not in offsets:
                    rank = parameter.shape[0] if factor == "lora_A" else parameter.shape[1]
                    offsets[layer] = (total, rank)
                    total += rank
    return offsets, total


def _group(shards: list[RowShard]) -> Any:
    groups = {id(shard.group): shard.group for shard in shards if shard.group is not None}
    if len(groups) > 1:
        raise RuntimeError("AdaLoRA rank allocation: the adapter's parameters are sharded over different process "
                           "groups; shard the whole model with one mesh (fully_shard(..., mesh=...)).")
    return next(iter(groups.values()))


def singular_value_scores(allocator: Any, model: nn.Module) -> tuple[torch.Tensor, dict[str, tuple[int, int]]]:
    """Every process gets the same importance score of every singular value (one all-reduce) and each layer's slice."""
    import torch.distributed as dist

    adapter = allocator.adapter_name
    parameters = [(name, p) for name, p in _adapter_parameters(model, adapter)
                  if any(f"{factor}.{adapter}" in name for factor in _ROWS)]
    offsets, total = _layer_offsets(parameters)
    shards = {name: row_shard(p) for name, p in parameters}
    group = _group(list(shards.values()))
    first_in_group = dist.get_rank(group) == 0
    device = next(iter(shards.values())).local.device
    buffer = torch.zeros(3, total, dtype=torch.float32, device=device)
    b_rows: dict[str, int] = {}
    for name, _ in parameters:
        factor = next(f for f in _ROWS if f"{f}.{adapter}" in name)
        layer = name.replace(factor, "%s")
        offset, rank = offsets[layer]
        shard = shards[name]
        if factor == "lora_B":
            b_rows[layer] = shard.total
        if shard.group is None and not first_in_group:
            continue  # a whole (unsharded) tensor on every process: counted once
        score = allocator._element_score(name).float()
        if factor == "lora_B":  # (out, r): a partial sum over this process's rows; divided by out after reducing
            buffer[2, offset:offset + rank] += score.sum(dim=0)
        else:  # lora_A (r, in): whole rows are local, so their mean is exact; lora_E (r, 1)
            values = score.mean(dim=1) if factor == "lora_A" else score.view(-1)
            buffer[_ROWS[factor], offset + shard.start:offset + shard.start + shard.rows] = values
    dist.all_reduce(buffer, group=group)
    for layer, rows in b_rows.items():
        offset, rank = offsets[layer]
        buffer[2, offset:offset + rank] /= rows
    return buffer[0] + (buffer[1] + buffer[2]), offsets


def mask_to_budget(allocator: Any, model: nn.Module, budget: int) -> dict[str, list[bool]]:
    """PEFT's ``mask_to_budget`` on sharded parameters: zero the singular values below the budget's threshold."""
    scores, offsets = singular_value_scores(allocator, model)
    threshold = torch.kthvalue(scores, k=allocator.init_bgt - budget)[0].item()
    rank_pattern: dict[str, list[bool]] = {}
    with torch.no_grad():
        for name, parameter in _adapter_parameters(model, allocator.adapter_name):
            if f"lora_E.{allocator.adapter_name}" not in name:
                continue
            offset, rank = offsets[name.replace("lora_E", "%s")]
            masked = scores[offset:offset + rank] <= threshold
            _mask_rows(parameter, masked)
            rank_pattern[name] = (~masked).tolist()
    return rank_pattern


def mask_using_rank_pattern(allocator: Any, model: nn.Module, rank_pattern: dict[str, list[bool]]) -> None:
    """PEFT's ``mask_using_rank_pattern`` on sharded parameters (after the final allocation)."""
    adapter = allocator.adapter_name
    truncated = adapter not in next(iter(rank_pattern))
    with torch.no_grad():
        for name, parameter in _adapter_parameters(model, adapter):
            if f"lora_E.{adapter}" in name:
                key = name.replace(f".{adapter}", "") if truncated else name
                _mask_rows(parameter, ~torch.tensor(rank_pattern[key], dtype=torch.bool))


def _mask_rows(parameter: torch.Tensor, masked: torch.Tensor) -> None:
    """Zero the rows of ``parameter`` (an (r, 1) lora_E, possibly sharded) where ``masked`` (length r) is true."""
    shard = row_shard(parameter)
    rows = masked[shard.start:shard.start + shard.rows].to(shard.local.device).view(-1, 1)
    shard.local.masked_fill_(rows, 0.0)

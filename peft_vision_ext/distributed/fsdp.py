"""``shard_model``: FSDP2 for a vision PeftModel in one call, quantized base weights kept whole.

``fully_shard`` (FSDP2) turns parameters into DTensors and, at forward, all-gathers them into plain tensors. A
bitsandbytes ``Params4bit``/``Int8Params`` weight carries its quantization state on the parameter object, which that
round trip drops (bitsandbytes then fails with "quant_state is required"). They are frozen and already 4/8-bit, so
they stay out of sharding (``ignored_params``) and every process keeps its own copy; the adapters, heads and every
full-precision parameter are sharded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from ..layers.shards import has_dtensor_parameters, is_dtensor


def quantized_parameters(model: nn.Module) -> set[nn.Parameter]:
    """The bitsandbytes-quantized weights of ``model`` (pass them as ``fully_shard(..., ignored_params=...)``)."""
    return {p for p in model.parameters() if type(p).__name__ in ("Params4bit", "Int8Params")}


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The members of every ``nn.ModuleList``/``nn.Sequential`` made of two or more modules of one class with
    parameters (transformer blocks, ResNet/ConvNeXt stages' blocks, Swin stages and their blocks), innermost first."""
    blocks: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
            children = list(module.children())
            if len(children) >= 2 and len({type(child) for child in children}) == 1 and \
                    all(any(True for _ in child.parameters()) for child in children):
                blocks.extend(children)
    depth = {id(module): name.count(".") for name, module in model.named_modules()}
    return sorted(blocks, key=lambda module: -depth[id(module)])


def shard_model(model: nn.Module, units: Iterable[nn.Module] | None = None, **fully_shard_kwargs: Any) -> nn.Module:
    """Shard ``model`` (a PeftModel or any module, after ``get_peft_model``) with FSDP2: ``fully_shard`` on every unit
    (default: :func:`repeated_blocks`, innermost first), then on ``model``; bitsandbytes-quantized weights are ignored
    (kept whole on every process). Needs an initialised process group; ``fully_shard_kwargs`` (``mesh``,
    ``reshard_after_forward``, ``mp_policy``, ...) go to every call. Returns ``model``, now an FSDP module.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("shard_model: no process group; call torch.distributed.init_process_group() first "
                           "(torchrun sets the environment for it).")
    if has_dtensor_parameters(model):
        raise RuntimeError("shard_model: the model is already sharded (its parameters are DTensors).")
    ignored = quantized_parameters(model) | set(fully_shard_kwargs.pop("ignored_params", None) or ())
    chosen = list(repeated_blocks(model) if units is None else units)
    for unit in chosen:
        fully_shard(unit, ignored_params=ignored or None, **fully_shard_kwargs)
    fully_shard(model, ignored_params=ignored or None, **fully_shard_kwargs)
    return model


def is_sharded(model: nn.Module) -> bool:
    """True when every trainable parameter of ``model`` is a DTensor (FSDP2)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return bool(trainable) and all(is_dtensor(p) for p in trainable)

"""Saving a sharded (FSDP2) PeftModel's adapter: the adapter's tensors gathered, written by process 0 only.

``PeftModel.save_pretrained`` reads ``state_dict()``, which under FSDP2 holds each process's shards (DTensors): it
cannot write a loadable adapter. Only the tensors the adapter file can contain are gathered (every parameter of the
saved adapters, modules_to_save copies included, and every trainable parameter, e.g. biases under ``bias="all"``);
each tensor is all-gathered in turn and only process 0 keeps it. The vision model card's base fingerprint (which
``load_adapter`` checks) hashes the frozen base: its tensors are gathered one at a time for that and dropped once
hashed, so saving moves the base over the network once but never holds more than one base tensor whole.

FSDP1 (``FullyShardedDataParallel``, the root passed) saves through its own full state dict, gathered unit by unit
onto process 0 (the whole model on process 0's CPU once, as FSDP1 checkpoints do).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..card_facts import PRECOMPUTED_BASE, base_state_of_peft_model, heads_of, is_vision_model
from ..fingerprints import fingerprint
from ..layers.shards import has_dtensor_parameters, is_dtensor, is_fsdp1


def find_peft_model(model: Any) -> Any:
    """The PeftModel inside ``model`` (possibly wrapped by DDP/FSDP1/accelerate as ``.module``), or ``None``."""
    while model is not None and not (hasattr(model, "peft_config") and hasattr(model, "save_pretrained")):
        model = getattr(model, "module", None)
    return model


def _peft_model(model: nn.Module) -> Any:
    found = find_peft_model(model)
    if found is None:
        raise TypeError(f"save_adapter needs a PeftModel (possibly wrapped), got {type(model).__name__}")
    return found


def _owned(key: str, adapters: list[str]) -> bool:
    parts = key.split(".")
    return any(adapter in parts for adapter in adapters)


def gather_adapter_state_dict(model: nn.Module, adapters: list[str] | None = None) -> dict[str, torch.Tensor] | None:
    """Every process calls it (collective); process 0 gets the full-tensor state dict ``save_pretrained`` needs
    (adapter tensors and unsharded entries, on CPU), the others ``None``."""
    import torch.distributed as dist

    peft_model = _peft_model(model)
    adapters = list(adapters or peft_model.peft_config)
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    main = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    gathered: dict[str, torch.Tensor] = {}
    for key, value in peft_model.state_dict().items():  # the same order on every process
        if is_dtensor(value):
            if not (_owned(key, adapters) or key in trainable):
                continue  # frozen base weights: never part of an adapter file
            value = value.full_tensor()
        if main:
            gathered[key] = value.detach().cpu()
    return gathered if main else None


def _precompute_base(peft_model: Any, main: bool) -> dict[str, Any] | None:
    """What the vision model card reads from the base (shapes and fingerprint), computed by every process."""
    heads = list(heads_of(peft_model))
    shapes: dict[str, torch.Tensor] = {}
    prints: dict[str, str] = {}
    for name, tensor in base_state_of_peft_model(peft_model).items():  # the same order on every process
        shapes[name] = torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
        whole = tensor.full_tensor() if is_dtensor(tensor) else tensor
        if main:
            prints.update(fingerprint({name: whole}, heads))
        del whole
    return {"shapes": shapes, "fingerprint": prints} if main else None


def save_adapter(model: nn.Module, directory: str | os.PathLike[str], **save_kwargs: Any) -> None:
    """``save_pretrained`` for a PeftModel sharded with FSDP2 (or not sharded at all): every process calls it,
    process 0 writes ``directory``; ``save_kwargs`` go to ``save_pretrained`` (``selected_adapters``, ...)."""
    import torch.distributed as dist

    if is_fsdp1(model):
        _save_fsdp1(model, directory, **save_kwargs)
        return
    peft_model = _peft_model(model)
    distributed = dist.is_available() and dist.is_initialized()
    main = not distributed or dist.get_rank() == 0
    sharded = has_dtensor_parameters(peft_model)
    base = _precompute_base(peft_model, main) if sharded and is_vision_model(peft_model.get_base_model()) else None
    state = gather_adapter_state_dict(peft_model, save_kwargs.get("selected_adapters"))
    if state is not None:
        if base is not None:
            peft_model.__dict__[PRECOMPUTED_BASE] = base
        try:
            peft_model.save_pretrained(str(directory), state_dict=state, **save_kwargs)
        finally:
            peft_model.__dict__.pop(PRECOMPUTED_BASE, None)
    if distributed:
        dist.barrier()


def _save_fsdp1(model: nn.Module, directory: str | os.PathLike[str], **save_kwargs: Any) -> None:
    """FSDP1: its own full state dict (gathered unit by unit, kept on process 0 only, on CPU), written by process 0
    with ``save_pretrained(state_dict=...)`` (the hook sharded-save describes the base from it)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    if not isinstance(model, FSDP):
        raise TypeError("save_adapter under FSDP1: pass the FullyShardedDataParallel root (the model FSDP returned), "
                        "whose state dict gathers every unit.")
    config = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, config):
        state = model.state_dict()
    if dist.get_rank() == 0:
        _peft_model(model).save_pretrained(str(directory), state_dict=state, **save_kwargs)
    dist.barrier()

"""Which rows of a parameter this process holds, for code that reduces over parameters by hand.

FSDP2 (``torch.distributed.fsdp.fully_shard``) turns every parameter it manages into a ``DTensor`` sharded along
dim 0 (``Shard(0)``, torch.chunk semantics: the last processes may hold fewer rows or none), replicated along the
mesh's other dimensions (HSDP). Per-element statistics can then be computed on the local rows only, and per-row or
per-column reductions need one collective over the processes that share the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def is_dtensor(tensor: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return isinstance(tensor, DTensor)


def has_dtensor_parameters(model: torch.nn.Module) -> bool:
    """True when any parameter of ``model`` is a DTensor (FSDP2 sharded it)."""
    return any(is_dtensor(p) for p in model.parameters())


def is_fsdp1(model: torch.nn.Module) -> bool:
    """True when ``model`` is or contains a FullyShardedDataParallel (FSDP1) module."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return False
    return any(isinstance(module, FullyShardedDataParallel) for module in model.modules())


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The process-local part of ``tensor`` (the tensor itself when it is not a DTensor)."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


@dataclass(frozen=True)
class RowShard:
    """Rows ``start:start + rows`` of a parameter with ``total`` rows live in ``local``; ``group`` is the process group
    that shares the parameter (``None``: not sharded, every process holds all of it)."""
    local: torch.Tensor
    start: int
    rows: int
    total: int
    group: Any = None


class UnsupportedSharding(ValueError):
    """A parameter is sharded in a layout the plugin cannot read rows from: anything but ``Shard(0)`` on one mesh
    dimension (FSDP2's ``fully_shard``, HSDP), or a local shard whose size FSDP changed."""


def row_shard(tensor: torch.Tensor) -> RowShard:
    """Where ``tensor``'s rows are. Supports plain tensors and DTensors placed ``Shard(0)`` on one mesh dimension and
    ``Replicate()`` on any others (FSDP2 and HSDP); anything else raises :class:`UnsupportedSharding`."""
    total = tensor.shape[0] if tensor.dim() else 1
    if not is_dtensor(tensor):
        return RowShard(tensor, 0, total, total)
    mesh, placements = tensor.device_mesh, tensor.placements
    sharded = [dim for dim, placement in enumerate(placements) if not placement.is_replicate()]
    if len(sharded) != 1 or not placements[sharded[0]].is_shard(0):
        raise UnsupportedSharding(
            f"parameter sharded as {tuple(placements)} over a {tuple(mesh.shape)} mesh: only Shard(0) on one mesh "
            "dimension (FSDP2's fully_shard, HSDP) is supported")
    dim = sharded[0]
    size, index = mesh.size(dim), mesh.get_local_rank(dim)
    chunk = -(-total // size)  # ceil, as torch.chunk
    start = min(index * chunk, total)
    rows = min(start + chunk, total) - start
    local = tensor.to_local()
    if local.shape[0] != rows:  # FSDP changed its layout: refuse rather than reduce the wrong rows
        raise UnsupportedSharding(f"expected {rows} local rows at offset {start} of {total}, found {local.shape[0]}")
    return RowShard(local, start, rows, total, mesh.get_group(dim))

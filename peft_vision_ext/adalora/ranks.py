"""Where AdaLoRA's ranks went: one row per adapted layer, in network order.

A layer's rank is its number of nonzero singular values (entries of ``lora_E``): allocation prunes by setting them
to zero. ``lora_E`` starts at zero, so ranks read 0 before the first optimizer step. Once the final allocation has
run, ``rank_pattern`` records what each layer keeps; a saved adapter is pruned to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..layers.shards import is_dtensor


@dataclass(frozen=True)
class LayerRank:
    path: str  # module path in the base model (rank_pattern's key without ``.lora_E``)
    layer: str  # the adapter layer's class: SVDLinear, AdaLoraConv2d, ...
    size: int  # singular values it holds (init_r, or the allocated rank after a pruned reload)
    current: int  # nonzero singular values now
    allocated: int | None  # kept by the final allocation (rank_pattern); None before it ran


def layer_ranks(model: Any, adapter: str | None = None) -> list[LayerRank]:
    """The rank of every AdaLoRA layer of ``model`` (a PeftModel or its AdaLoraModel) for ``adapter``."""
    if adapter is None:
        active = getattr(model, "active_adapter", None) or "default"
        adapter = active[0] if isinstance(active, (list, tuple)) else active
    pattern = model.peft_config[adapter].rank_pattern or {}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model.model
    rows = []
    for path, module in base.named_modules():
        singular_values = getattr(module, "lora_E", None)
        if singular_values is None or adapter not in singular_values:
            continue
        values = singular_values[adapter]
        if is_dtensor(values):  # FSDP2: r values, gathered (collective: every process must list the ranks)
            values = values.full_tensor()
        kept = pattern.get(f"{path}.lora_E.{adapter}", pattern.get(f"{path}.lora_E"))
        rows.append(LayerRank(path, type(module).__name__, int(values.shape[0]), int((values != 0).sum()),
                              None if kept is None else int(sum(kept))))
    return rows


def rank_pattern_table(model: Any, adapter: str | None = None) -> str:
    """:func:`layer_ranks` as a plain-text table with totals (logged by ``AdaLoraCallback`` at the end of training)."""
    rows = layer_ranks(model, adapter)
    if not rows:
        return "no AdaLoRA layers"
    width = max(len(row.path) for row in rows)
    lines = [f"{'layer':<{width}}  {'type':<14} {'size':>4} {'rank':>4} {'allocated':>9}"]
    for row in rows:
        allocated = "-" if row.allocated is None else str(row.allocated)
        lines.append(f"{row.path:<{width}}  {row.layer:<14} {row.size:>4} {row.current:>4} {allocated:>9}")
    total = sum(row.current for row in rows)
    lines.append(f"total rank {total} of {sum(row.size for row in rows)} over {len(rows)} layers "
                 f"(mean {total / len(rows):.2f})")
    return "\n".join(lines)

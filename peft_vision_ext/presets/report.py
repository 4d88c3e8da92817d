"""Render presets of a model as a table: module count, trainable parameters and trainable share.

Counts are measured, not computed from formulas: each preset is applied with PEFT to a copy of the model.
"""

from __future__ import annotations

import copy

from torch import nn

from ..families import detect_family
from . import list_presets, preset_config

_METHOD_EXTRAS: dict[str, dict[str, object]] = {"adalora": {"total_step": 1000}}


def _rank_kwargs(method: str, rank: int) -> dict[str, object]:
    if method == "ia3":
        return {}
    if method == "adalora":
        return {"init_r": rank, "target_r": rank}
    return {"r": rank}


def measure_preset(model: nn.Module, method: str, preset: str, rank: int = 8) -> tuple[int, int]:
    """(trainable, total) parameters of ``model`` with ``preset`` applied by PEFT (on a copy)."""
    import peft

    config = preset_config(model, method, preset, **_rank_kwargs(method, rank), **_METHOD_EXTRAS.get(method, {}))
    peft_model = peft.get_peft_model(copy.deepcopy(model), config)
    return peft_model.get_nb_trainable_parameters()


def presets_table(model: nn.Module, method: str = "lora", rank: int = 8) -> str:
    detection = detect_family(model)
    if detection is None:
        return f"{type(model).__name__}: nothing adaptable found."
    default = detection.family.default_preset(method)
    lines = [
        f"model {type(model).__name__}: family {detection.family.name} ({detection.kind}"
        f"{'' if detection.registered else ', structural'}), head {list(detection.heads) or 'none'}",
        f"method {method}, rank {rank}; default preset: {default}",
        "",
        f"| {'preset':<16} | {'modules':>7} | {'trainable':>12} | {'share':>7} |",
        f"|{'-' * 18}|{'-' * 8}:|{'-' * 13}:|{'-' * 8}:|",
    ]
    for name, modules in list_presets(model, method).items():
        try:
            trainable, total = measure_preset(model, method, name, rank)
        except (ValueError, TypeError, RuntimeError) as error:
            lines.append(f"| {name:<16} | {len(modules):>7} | refused by peft: {str(error).splitlines()[0][:60]}")
            continue
        mark = " *" if name == default else ""
        lines.append(f"| {name + mark:<16} | {len(modules):>7} | {trainable:>12,} | {100 * trainable / total:>6.2f}% |")
    lines.append("")
    lines.append("* default preset; trainable includes the task head (modules_to_save).")
    return "\n".join(lines)

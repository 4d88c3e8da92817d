"""AdaLoRA's rank schedule derived from the length of the run: one place for the callback, the quick start, the
examples and the benchmarks.

PEFT's defaults (``tinit=0``, ``tfinal=0``, ``deltaT=1``) prune from the first step to the last, with no warm-up
for the importance scores and no phase that trains the final rank pattern. The AdaLoRA paper warms up, prunes with
a cubic budget, then fine-tunes the final pattern (as we read its GLUE settings: about a tenth of training as
warm-up and a long final phase; EMA constants 0.85, PEFT's defaults). :data:`SCHEDULE` keeps that shape as fractions
of the optimizer steps (the final phase and the interval chosen on benchmarks/adalora_vision.py's tasks);
:func:`derive_schedule` turns them into steps.

A field left at PEFT's default cannot be told from one set to that value on purpose: such fields are derived;
``mode="peft"`` (``AdaLoraCallback(schedule="peft")``) keeps the configured values exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from .allocator import SCHEDULE_FIELDS

logger = logging.getLogger("peft_vision_ext")

ScheduleMode = Literal["derive", "peft"]
#: PEFT's AdaLoraConfig defaults for the fields derived here (identical from peft 0.15 to 0.21).
PEFT_DEFAULTS: dict[str, int] = {"tinit": 0, "tfinal": 0, "deltaT": 1}


@dataclass(frozen=True)
class ScheduleFractions:
    """The schedule as fractions of training (optimizer steps)."""
    warmup: float = 0.1  # tinit: importance scores settle before anything is pruned
    final: float = 0.3  # tfinal: the final rank pattern trains on its own
    interval: float = 0.01  # deltaT: allocate every 1 % of the steps (at least every step)


SCHEDULE = ScheduleFractions()


def derive_schedule(total_steps: int, fractions: ScheduleFractions = SCHEDULE) -> dict[str, int]:
    """``{"total_step", "tinit", "tfinal", "deltaT"}`` for a run of ``total_steps`` optimizer steps.

    Leaves at least one pruning step between warm-up and the final phase (short runs shrink both, down to PEFT's
    0 / 0 for runs of one or two steps).
    """
    if total_steps < 1:
        raise ValueError(f"AdaLoRA's schedule needs a run of at least one optimizer step; got {total_steps}")
    tinit = int(fractions.warmup * total_steps)
    tfinal = int(fractions.final * total_steps)
    while tinit + tfinal >= total_steps - 1 and (tinit or tfinal):
        tinit, tfinal = max(0, tinit - 1), max(0, tfinal - 1)
    return {"total_step": total_steps, "tinit": tinit, "tfinal": tfinal,
            "deltaT": max(1, round(fractions.interval * total_steps))}


def check_budget(init_r: int, target_r: int) -> None:
    """AdaLoRA prunes from ``init_r`` to an average of ``target_r``; PEFT's allocator crashes at its first pruning
    step ("kthvalue(): selected number k out of range"; peft 0.17.1 and 0.21.2) when there is nothing to prune."""
    if init_r <= target_r:
        raise ValueError(
            f"AdaLoRA init_r={init_r} <= target_r={target_r}: nothing to prune, and PEFT's rank allocator crashes at "
            "its first pruning step. Use init_r > target_r (e.g. preset_config(model, 'adalora', r=8): init_r 12 -> "
            "target_r 8), or LoRA for a fixed rank.")


def schedule_of(config: Any) -> dict[str, Any]:
    return {key: getattr(config, key) for key in SCHEDULE_FIELDS}


def apply_schedule(config: Any, total_steps: int, mode: ScheduleMode = "derive") -> dict[str, Any]:
    """Set ``config``'s schedule for a run of ``total_steps`` optimizer steps and return what is used.

    ``"derive"``: fields still at PEFT's default are derived from the run; fields the user set keep their value.
    ``"peft"``: only ``total_step`` follows the run, everything else stays as configured.
    Raises when the resulting warm-up and final phase leave no step to prune in.
    """
    if mode not in ("derive", "peft"):
        raise ValueError(f"AdaLoRA schedule mode must be 'derive' or 'peft', got {mode!r}")
    check_budget(config.init_r, config.target_r)
    config.total_step = total_steps
    if mode == "derive":
        derived = derive_schedule(total_steps)
        for key, default in PEFT_DEFAULTS.items():
            if getattr(config, key) == default:
                setattr(config, key, derived[key])
    if config.tinit >= total_steps - config.tfinal:
        raise ValueError(
            f"AdaLoRA: the run has {total_steps} optimizer steps, too few for tinit={config.tinit} + "
            f"tfinal={config.tfinal}. Lower tinit/tfinal or train for more steps.")
    used = schedule_of(config)
    logger.info("AdaLoRA schedule (%s): %s", mode, used)
    return used

"""AdaLoRA's RankAllocator state and rank pattern, not a hook.

No public API in PEFT: ipt, exp_avg_ipt, exp_avg_unc dicts keyed by parameter name, identical from 0.15 to 0.21.
AdaLoraCallback saves/restores it with Trainer checkpoints.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from ..targets import method_name

_ALLOCATOR_STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")
SCHEDULE_FIELDS = ("total_step", "tinit", "tfinal", "deltaT")  # AdaLoraConfig fields of the rank schedule


def rank_allocator_state(tuner: Any) -> dict[str, Any]:
    allocator = tuner.rankallocator
    state: dict[str, Any] = {
        key: {name: t.detach().cpu() for name, t in getattr(allocator, key).items()} for key in _ALLOCATOR_STATE
    }
    config = tuner.peft_config[tuner.trainable_adapter_name]
    state["rank_pattern"] = config.rank_pattern
    state["schedule"] = {key: getattr(config, key) for key in SCHEDULE_FIELDS}
    return state


def load_rank_allocator_state(tuner: Any, state: dict[str, Any]) -> None:
    allocator = tuner.rankallocator
    device = next(tuner.parameters()).device
    for key in _ALLOCATOR_STATE:
        setattr(allocator, key, {name: t.to(device) for name, t in state[key].items()})
    config = tuner.peft_config[tuner.trainable_adapter_name]
    if state.get("rank_pattern"):
        config.rank_pattern = state["rank_pattern"]
    for key, value in state.get("schedule", {}).items():  # older checkpoints carry none
        setattr(config, key, value)


def set_adalora_total_step(tuner: Any, steps: int) -> None:
    """Make the config and the RankAllocator (which may keep its own copy) agree on ``total_step``."""
    tuner.peft_config[tuner.trainable_adapter_name].total_step = steps
    if hasattr(tuner.rankallocator, "set_total_step"):
        tuner.rankallocator.set_total_step(steps)


def adalora_budget(tuner: Any, step: int) -> int | None:
    """The rank budget AdaLoRA's schedule sets at ``step`` (None once the final pattern is fixed)."""
    config = tuner.peft_config[tuner.trainable_adapter_name]
    if step >= config.total_step - config.tfinal:
        return None
    budget, _ = tuner.rankallocator.budget_schedule(step)
    return int(budget)


@contextlib.contextmanager
def quiet_adalora_rank_pattern(config: Any) -> Iterator[None]:
    """Silence exactly PEFT's "rank_pattern keys did not match any targeted module" for an AdaLoRA config whose
    pattern is AdaLoRA's own allocation record.

    Why: the final allocation writes ``rank_pattern`` keyed ``<module>.lora_E`` (a parameter, not a module), which
    peft >= 0.21's generic check for stray patterns can never match, so every reload of a trained AdaLoRA adapter
    warned, although AdaLoRA applies the pattern exactly (tests/test_hub.py checks the ranks). A pattern with any
    other key keeps PEFT's warning.
    """
    pattern = getattr(config, "rank_pattern", None) or {}
    is_adalora = method_name(config) == "adalora"
    if not (is_adalora and pattern and all(str(key).endswith(".lora_E") for key in pattern)):
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The following rank_pattern keys did not match any targeted module",
                                category=RuntimeWarning)
        yield

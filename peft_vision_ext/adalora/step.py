"""AdaLoRA's per-step work, in one place: what every training loop (``AdaLoraCallback`` under Trainer,
:func:`peft_vision_ext.train.run`, :func:`peft_vision_ext.detection.train_detector`, the benchmarks) does around
each optimizer step of an AdaLoRA adapter.

Before ``optimizer.step()``: the orthogonal regulariser's gradient (a vision PeftModel's forward never adds the
term to the loss, see :mod:`.regularization`). After it, while the gradients still exist: ``update_and_allocate``,
which updates the importance scores and masks ranks on AdaLoRA's schedule. A plain loop wraps its optimizer step::

    tuner = find_adalora_tuner(model)                        # None for other methods: every call is then a no-op
    start_run(tuner, total_steps)                            # the schedule spans the run
    for step in range(total_steps):
        loss.backward()
        with adalora_step(tuner, step):
            optimizer.step()
        optimizer.zero_grad()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .allocator import adalora_budget, set_adalora_total_step
from .regularization import add_orthogonal_regularization_grad
from .schedule import ScheduleMode, apply_schedule


def start_run(tuner: Any, total_steps: int, mode: ScheduleMode = "derive") -> dict[str, Any] | None:
    """Make AdaLoRA's schedule span a run of ``total_steps`` optimizer steps (config and rank allocator agree);
    returns the schedule used (None without an AdaLoRA tuner)."""
    if tuner is None:
        return None
    schedule = apply_schedule(tuner.peft_config[tuner.trainable_adapter_name], total_steps, mode)
    set_adalora_total_step(tuner, total_steps)
    return schedule


def before_optimizer_step(tuner: Any, regularize: bool = True) -> None:
    """The orthogonal regulariser's gradient, added to the adapter's ``.grad`` (``regularize=False``: none)."""
    if tuner is not None and regularize:
        add_orthogonal_regularization_grad(tuner)


def after_optimizer_step(tuner: Any, step: int) -> int | None:
    """Rank allocation for optimizer step ``step`` (0, 1, ...); returns the rank budget the schedule sets now."""
    if tuner is None:
        return None
    tuner.update_and_allocate(step)
    return adalora_budget(tuner, step)


@contextlib.contextmanager
def adalora_step(tuner: Any, step: int, regularize: bool = True) -> Iterator[None]:
    """Wrap one optimizer step (with whatever the loop does beside it: clipping, a scheduler step) in AdaLoRA's work."""
    before_optimizer_step(tuner, regularize)
    yield
    after_optimizer_step(tuner, step)

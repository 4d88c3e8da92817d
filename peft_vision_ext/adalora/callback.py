"""``AdaLoraCallback``: AdaLoRA's rank allocation under Hugging Face Trainer.

AdaLoRA only adapts ranks when ``update_and_allocate(step)`` runs after every optimizer step, while the
gradients still exist. Trainer never calls it, so without this callback AdaLoRA trains as a fixed-rank LoRA.
The callback calls it in ``on_optimizer_step`` (after ``optimizer.step()``, before ``zero_grad``; once per
optimizer step, so gradient accumulation is handled), makes ``total_step`` agree with the Trainer's number
of optimizer steps and derives the rest of the schedule from it (:mod:`.schedule`), adds AdaLoRA's orthogonal
regulariser (which a vision PeftModel never reaches, see :mod:`.regularization`), logs the current budget (and
every layer's rank at the end of training), and saves/restores the rank allocator's state (importance averages and
schedule) with every checkpoint so a resumed run allocates exactly like an uninterrupted one.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from typing import Any

import torch

from ..distributed.save import find_peft_model, save_adapter
from .allocator import load_rank_allocator_state, rank_allocator_state
from .ranks import rank_pattern_table
from .regularization import find_adalora_tuner
from .schedule import ScheduleMode, schedule_of
from .sharded import has_sharded_adapter
from .step import after_optimizer_step, before_optimizer_step, start_run

logger = logging.getLogger("peft_vision_ext")

STATE_FILE = "adalora_rank_allocator.pt"


def check_ranks_in_sync(tuner: Any, args: Any) -> None:
    """Under data parallelism every process must hold the same adapter after the first optimizer step, or each
    allocates its own ranks from its own gradients. Raises when they differ (a checksum per process).

    Only for plain data parallelism (DDP): FSDP and DeepSpeed ZeRO-3 shard parameters, so per-process sums differ
    legitimately there.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    distributed = getattr(getattr(args, "distributed_state", None), "distributed_type", None)
    if not str(getattr(distributed, "value", distributed)).upper().startswith("MULTI_"):
        return
    parameters = [p.detach() for p in tuner.model.parameters() if p.requires_grad]
    device = parameters[0].device if parameters else torch.device("cpu")
    local = torch.stack([sum(p.double().sum() for p in parameters), sum(p.double().abs().sum() for p in parameters)])
    local = local.to(device)
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    if any(not torch.equal(other, gathered[0]) for other in gathered[1:]):
        raise RuntimeError(
            "AdaLoraCallback: the processes hold different adapter weights after the first optimizer step, so their "
            "gradients are not synchronised and each would allocate different AdaLoRA ranks. Known cause: calling "
            "trainer.evaluate() before trainer.train() makes accelerate treat the model as prepared and skip the "
            "DistributedDataParallel wrapper (transformers 4.57-5.24, accelerate 1.15). Evaluate after training, or "
            "with your own loop, instead.")


def _state_file(sharded: bool) -> str:
    """STATE_FILE, or one file per process when the adapter is sharded (FSDP2)."""
    import torch.distributed as dist

    if not sharded:
        return STATE_FILE
    stem, extension = os.path.splitext(STATE_FILE)
    return f"{stem}.rank{dist.get_rank()}-of-{dist.get_world_size()}{extension}"


class _AdaLoraCallback:
    """Runs AdaLoRA's rank allocation under ``transformers.Trainer``: ``Trainer(..., callbacks=[AdaLoraCallback()])``.

    ``schedule``: ``"derive"`` (default) derives ``tinit``/``tfinal``/``deltaT`` left at PEFT's defaults from the
    Trainer's optimizer steps (:func:`peft_vision_ext.adalora.derive_schedule`); ``"peft"`` keeps the configured
    values. ``total_step`` always follows the Trainer. The schedule used is logged and kept in :attr:`schedule`.

    ``orthogonal_regularization``: add the gradient of AdaLoRA's orthogonal regulariser (weight: the config's
    ``orth_reg_weight``) before every optimizer step, as PEFT's ``AdaLoraModel.forward`` would for a model that
    returns its loss. It is added after Trainer's gradient clipping and is not part of the logged loss.

    ``resume_from_checkpoint``: checkpoint folder whose allocator state to restore; by default the Trainer's
    ``output_dir/checkpoint-<global_step>`` when training resumes at a step > 0.
    """

    def __init__(self, resume_from_checkpoint: str | None = None, schedule: ScheduleMode = "derive",
                 orthogonal_regularization: bool = True) -> None:
        if schedule not in ("derive", "peft"):
            raise ValueError(f"AdaLoraCallback(schedule={schedule!r}): use 'derive' or 'peft'")
        self.resume_from_checkpoint = resume_from_checkpoint
        self.schedule_mode = schedule
        self.orthogonal_regularization = orthogonal_regularization
        self.schedule: dict[str, Any] | None = None
        self.budget: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        tuner = find_adalora_tuner(model)
        if tuner is None:
            warnings.warn("AdaLoraCallback: the model has no AdaLoRA adapter; the callback does nothing.", stacklevel=2)
            return
        config = tuner.peft_config[tuner.trainable_adapter_name]
        steps = state.max_steps
        if steps and steps > 0:
            if config.total_step is not None and config.total_step != steps:
                warnings.warn(
                    f"AdaLoRA total_step={config.total_step} but the Trainer runs {steps} optimizer steps; using "
                    f"{steps} so that rank allocation ends with training.",
                    stacklevel=2,
                )
            self.schedule = start_run(tuner, steps, self.schedule_mode)
        checkpoint = self.resume_from_checkpoint
        if checkpoint is None and state.global_step > 0:
            checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if checkpoint is not None:
            sharded = has_sharded_adapter(tuner.model, tuner.trainable_adapter_name)
            path = os.path.join(checkpoint, _state_file(sharded))
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"AdaLoraCallback: resuming at step {state.global_step} but {path} is missing; rank allocation "
                    "cannot continue exactly. Pass resume_from_checkpoint=... to the callback (a sharded run resumes "
                    "from a sharded checkpoint with the same number of processes)."
                )
            load_rank_allocator_state(tuner, torch.load(path, map_location="cpu", weights_only=False))
            self.schedule = schedule_of(config)  # the interrupted run's schedule, restored with the allocator
            logger.info("AdaLoRA rank allocator restored from %s", path)
        if self.schedule is not None and state.is_world_process_zero:
            logger.info("AdaLoRA schedule: %s", ", ".join(f"{k}={v}" for k, v in self.schedule.items()))

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        before_optimizer_step(find_adalora_tuner(model), self.orthogonal_regularization)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        tuner = find_adalora_tuner(model)
        if tuner is None:
            return
        step = state.global_step  # optimizer steps completed before this one: 0, 1, ...
        if step == 0:
            check_ranks_in_sync(tuner, args)
        self.budget = after_optimizer_step(tuner, step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs is None or self.budget is None:
            return
        logs["adalora_budget"] = self.budget
        # Trainer appends the entry to log_history before calling the callbacks: put it there too.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1]["adalora_budget"] = self.budget

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        tuner = find_adalora_tuner(model)
        if tuner is None:
            return
        table = rank_pattern_table(tuner, tuner.trainable_adapter_name)  # every process: sharded E are gathered
        if state.is_world_process_zero:
            logger.info("AdaLoRA ranks at the end of training:\n%s", table)

    def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        tuner = find_adalora_tuner(model)
        if tuner is None:
            return
        sharded = has_sharded_adapter(tuner.model, tuner.trainable_adapter_name)
        if not (sharded or state.is_world_process_zero):
            return
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        os.makedirs(checkpoint, exist_ok=True)
        # Sharded (FSDP2): each process holds the importance statistics of its own rows and saves them to its own file.
        torch.save(rank_allocator_state(tuner), os.path.join(checkpoint, _state_file(sharded)))
        # PEFT saves AdaLoRA adapters pruned to the current rank pattern. Mid-training that loses the masked
        # ranks (the allocator may revive them) and the pruned tensors no longer fit the model Trainer resumes
        # into. Re-save the checkpoint's adapter unpruned (masked ranks have E == 0: same outputs); the pattern
        # itself is kept in STATE_FILE and restored on resume.
        peft_model = find_peft_model(model)
        config = tuner.peft_config[tuner.trainable_adapter_name]
        pattern, config.rank_pattern = config.rank_pattern, None
        try:
            if sharded:  # every process takes part; process 0 writes
                save_adapter(peft_model, checkpoint, selected_adapters=[tuner.trainable_adapter_name])
            else:
                peft_model.save_pretrained(checkpoint, selected_adapters=[tuner.trainable_adapter_name])
        finally:
            config.rank_pattern = pattern


@functools.cache
def adalora_callback_class() -> type:
    """``AdaLoraCallback``: the methods above on transformers' ``TrainerCallback``, built once, on first use.

    Why not at import: transformers' callback module loads its Trainer arguments machinery, which
    ``import peft_vision_ext`` does not (it loads nothing beyond what peft loads; tests/test_foundation.py)."""
    from transformers import TrainerCallback  # heavy (Trainer machinery): only when a Trainer callback is asked for

    return type("AdaLoraCallback", (_AdaLoraCallback, TrainerCallback),
                {"__module__": __name__, "__qualname__": "AdaLoraCallback", "__doc__": _AdaLoraCallback.__doc__})


def __getattr__(name: str) -> type:
    if name == "AdaLoraCallback":  # built on first use (adalora_callback_class); no module of ours is loaded here
        return adalora_callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

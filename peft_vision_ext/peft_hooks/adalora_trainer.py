"""Hook ``adalora-trainer-warning``: warn when a Trainer trains an AdaLoRA model without AdaLoraCallback."""

from __future__ import annotations

import functools
from typing import Any

from ..patching import HOOK_MARK


def _calling_trainer() -> Any:
    """The transformers Trainer on the call stack, if any (looked up once per AdaLoRA model)."""
    import sys

    frame = sys._getframe(2)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if candidate is not None and any(
            cls.__name__ == "Trainer" and cls.__module__.startswith("transformers") for cls in type(candidate).__mro__
        ):
            return candidate
        frame = frame.f_back
    return None


def warn_if_trainer_skips_allocation(tuner: Any) -> None:
    """Once per AdaLoRA model: warn when a Trainer trains it without AdaLoraCallback."""
    if not tuner.training or getattr(tuner, "_pve_trainer_checked", False):
        return
    tuner._pve_trainer_checked = True
    trainer = _calling_trainer()
    callbacks = getattr(getattr(trainer, "callback_handler", None), "callbacks", [])
    if trainer is not None and not any(type(c).__name__ == "AdaLoraCallback" for c in callbacks):
        import warnings

        warnings.warn(
            "A Trainer is training an AdaLoRA model without peft_vision_ext.AdaLoraCallback: ranks are not being "
            "allocated (AdaLoRA trains as a fixed-rank LoRA). Pass callbacks=[AdaLoraCallback()].",
            UserWarning,
            stacklevel=3,
        )


def _install_adalora_trainer_warning() -> None:
    # Why: nothing in Trainer calls AdaLoraModel.update_and_allocate, so AdaLoRA silently trains as a fixed-rank
    # LoRA. PeftModel.forward (which, without a task_type, calls the base model directly and skips
    # AdaLoraModel.forward) is the first place that sees the Trainer at work; the check runs once per model.
    from peft import PeftModel
    from peft.tuners.adalora.model import AdaLoraModel

    original = PeftModel.forward
    if getattr(original, HOOK_MARK, False):
        return

    @functools.wraps(original)
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        tuner = getattr(self, "base_model", None)
        if isinstance(tuner, AdaLoraModel):
            warn_if_trainer_skips_allocation(tuner)
        return original(self, *args, **kwargs)

    setattr(forward, HOOK_MARK, True)
    PeftModel.forward = forward

"""Hook: adapters on layers whose parent computes ``F.linear`` with their weight instead of calling them."""

from __future__ import annotations

import functools
from typing import Any

from ..patching import HOOK_MARK
from ..routing import ROUTED_ATTRIBUTE, route


def _install_weight_routing() -> None:
    # Why: timm BEiT/EVA/SwinV2 attention computes F.linear(x, self.qkv.weight, qkv_bias) and torchvision Swin passes
    # qkv.weight / proj.weight to shifted_window_attention: PEFT wraps those Linear layers, the parent never calls the
    # wrapper, and the adapter silently never acts. BaseTuner.inject_adapter is where every injection ends; once PEFT
    # has wrapped the targets, the parents found by the pre-injection forward (compat.enforce, which records them on
    # the config) get their F.linear routed through the wrappers (peft_vision_ext.routing). Installed after the
    # vision-default-targets hook, so it wraps that one and sees the config it completed.
    from peft.tuners.tuners_utils import BaseTuner

    original = BaseTuner.inject_adapter
    if getattr(original, f"{HOOK_MARK}routing", False):
        return

    @functools.wraps(original)
    def inject_adapter(self: Any, model: Any, adapter_name: str, *args: Any, **kwargs: Any) -> Any:
        result = original(self, model, adapter_name, *args, **kwargs)
        config = self.peft_config.get(adapter_name)
        routed = config.__dict__.pop(ROUTED_ATTRIBUTE, None) if config is not None else None
        if routed:
            route(model, routed)
        return result

    setattr(inject_adapter, HOOK_MARK, True)
    setattr(inject_adapter, f"{HOOK_MARK}routing", True)
    BaseTuner.inject_adapter = inject_adapter

"""Hook ``adalora-conv2d``: AdaLoRA on Conv2d (all groups) on every supported PEFT version."""

from __future__ import annotations

from typing import Any

from ..adalora.layer import AdaLoraConv2d
from ..patching import HOOK_MARK, ORIGINALS


def _install_adalora_conv() -> None:
    # Why: PEFT < 0.20 refuses Conv2d for AdaLoRA; PEFT >= 0.20's SVDConv2d ignores `groups` (depthwise convs
    # crash at the first forward) and runs a second full-size convolution. AdaLoraModel._create_new_module is
    # the per-tuner dispatch point; we route plain Conv2d to peft_vision_ext.adalora.AdaLoraConv2d (same
    # parameter names/shapes as upstream for groups == 1) and everything else to PEFT.
    from peft.tuners.adalora.model import AdaLoraModel
    from peft.tuners.tuners_utils import BaseTunerLayer
    from torch import nn

    original = AdaLoraModel._create_new_module
    if getattr(original, HOOK_MARK, False):
        return

    def _create_new_module(lora_config: Any, adapter_name: str, target: Any, **kwargs: Any) -> Any:
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if type(base) is nn.Conv2d:
            kwargs.pop("device_map", None)
            return AdaLoraConv2d(target, adapter_name, config=lora_config, **kwargs)
        return original(lora_config, adapter_name, target, **kwargs)

    setattr(_create_new_module, HOOK_MARK, True)
    ORIGINALS["adalora-conv2d"] = original
    AdaLoraModel._create_new_module = staticmethod(_create_new_module)

"""Hook ``adalora-sharded-allocation``: AdaLoRA's RankAllocator on FSDP2-sharded adapters.

Why: PEFT's ``RankAllocator`` (identical from 0.15 to 0.21) calls ``.tolist()`` and ``torch.kthvalue`` on its
importance scores; when ``fully_shard`` has made the adapter parameters DTensors the first masking step fails with
``.tolist() is not supported for tensor subclasses, got DTensor`` (and a working version would need every factor on
every process). The three methods that touch parameters go to :mod:`peft_vision_ext.adalora.sharded` when an adapter
parameter is a DTensor; otherwise PEFT's own code runs unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

from ..adalora import sharded
from ..patching import HOOK_MARK, ORIGINALS

_METHODS = ("update_ipt", "mask_to_budget", "mask_using_rank_pattern")


def _install_adalora_sharded_allocation() -> None:
    from peft.tuners.adalora.layer import RankAllocator

    for method in _METHODS:
        original = getattr(RankAllocator, method)
        if getattr(original, HOOK_MARK, False):
            continue
        ORIGINALS[f"adalora-sharded-allocation.{method}"] = original

        @functools.wraps(original)
        def wrapper(self: Any, model: Any, *args: Any, _original: Any = original, _method: str = method) -> Any:
            if sharded.has_sharded_adapter(model, self.adapter_name):
                return getattr(sharded, _method)(self, model, *args)
            return _original(self, model, *args)

        setattr(wrapper, HOOK_MARK, True)
        setattr(RankAllocator, method, wrapper)

"""Hook ``modules-to-save-keyword-calls``: heads trained in full may be called with keyword arguments only.

Older PEFT (0.17) defines ``ModulesToSaveWrapper.forward(self, x, *args, **kwargs)``: a head its model calls with
keywords only (ZoeDepth's ``relative_head(hidden_states=...)`` and ``metric_head(outconv_activation=..., ...)``)
raised ``forward() missing 1 required positional argument: 'x'`` at the first forward. Newer PEFT takes
``*args, **kwargs``. A keyword-only call goes to the active copy (or the original module) unchanged.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from ..patching import HOOK_MARK, ORIGINALS


def _install_modules_to_save_keyword_calls() -> None:
    from peft.utils.other import ModulesToSaveWrapper

    original = ModulesToSaveWrapper.forward
    if getattr(original, HOOK_MARK, False) or "x" not in inspect.signature(original).parameters:
        return  # already installed, or a PEFT whose wrapper takes *args, **kwargs
    ORIGINALS["modules-to-save-keyword-calls"] = original

    @functools.wraps(original)
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        if args or "x" in kwargs or "adapter_names" in kwargs:
            return original(self, *args, **kwargs)
        active = [a for a in self.active_adapters if a in self.modules_to_save]
        if self.disable_adapters or not active:
            return self.original_module(**kwargs)
        return self.modules_to_save[active[0]](**kwargs)

    setattr(forward, HOOK_MARK, True)
    ModulesToSaveWrapper.forward = forward

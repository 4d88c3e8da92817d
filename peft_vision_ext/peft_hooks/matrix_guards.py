"""Hook ``matrix-guards``: the compatibility matrix at merge time and before PEFT's pre-injection step.

Injection itself is checked in the inject_adapter hook (default_targets.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ..compat.enforce import enforce_injection, enforce_merge
from ..patching import HOOK_MARK


def _tuner_classes() -> list[type]:
    from peft.tuners.tuners_utils import BaseTuner

    found, pending = [], [BaseTuner]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def _install_matrix_merge() -> None:
    # Why: several methods crash halfway through a merge into bitsandbytes or grouped-conv layers (leaving some
    # layers merged, some not) or silently merge wrong. Every merge path goes through BaseTuner.merge_adapter or a
    # tuner's _unload_and_optionally_merge(merge=True) (merge_and_unload); in 0.17 each tuner defines its own, in
    # 0.21 BaseTuner does and a few override, so every class defining one is wrapped. The check runs first.

    def argument(args: tuple, kwargs: dict, name: str, position: int | None, default: Any) -> Any:
        if name in kwargs:
            return kwargs[name]
        return args[position] if position is not None and len(args) > position else default

    def guard(original: Callable[..., Any], merge_position: int | None, names_position: int) -> Callable[..., Any]:
        @functools.wraps(original)
        def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
            if argument(args, kwargs, "merge", merge_position, True):
                enforce_merge(self, argument(args, kwargs, "adapter_names", names_position, None))
            return original(self, *args, **kwargs)

        setattr(guarded, HOOK_MARK, True)
        return guarded

    def checked_before_injection(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def _pre_injection_hook(self: Any, model: Any, config: Any, *args: Any, **kwargs: Any) -> Any:
            enforce_injection(model, config)
            return original(self, model, config, *args, **kwargs)

        setattr(_pre_injection_hook, HOOK_MARK, True)
        return _pre_injection_hook

    for cls in _tuner_classes():
        # VeRA (and other shared-weight tuners) inspect the targets in _pre_injection_hook, before inject_adapter:
        # the matrix has to answer first there too, so their refusals read like every other one.
        original = cls.__dict__.get("_pre_injection_hook")
        if original is not None and not getattr(original, HOOK_MARK, False):
            cls._pre_injection_hook = checked_before_injection(original)
        # merge_adapter(adapter_names, safe_merge); _unload_and_optionally_merge(merge, progressbar, safe_merge,
        # adapter_names) -- the same positions on every supported PEFT version.
        for name, merge_position, names_position in (("merge_adapter", None, 0),
                                                     ("_unload_and_optionally_merge", 0, 3)):
            original = cls.__dict__.get(name)
            if original is not None and not getattr(original, HOOK_MARK, False):
                setattr(cls, name, guard(original, merge_position, names_position))

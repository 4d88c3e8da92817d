"""The bookkeeping every patch of a third-party callable shares (base layer: imports nothing of the package).

A patch marks its wrapper with :data:`HOOK_MARK` so that installing it twice changes nothing, and keeps the
callable it replaced in :data:`ORIGINALS` (tests compare against upstream). The list of patches, with their reasons
and version gates, is :data:`peft_vision_ext.peft_hooks.HOOKS`; each declares the attributes it wraps
(:class:`Wrapped`). A hook whose attributes a PEFT release lacks (or whose signatures changed) is skipped, never
half-installed, and recorded in :data:`SKIPPED`: the compatibility matrix (a layer above) refuses what it provided.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Set (to True) on every wrapper a hook installs: a callable carrying it is already ours.
HOOK_MARK = "__peft_vision_ext_hook__"
#: The third-party callables each hook wrapped (hook name -> original), for tests that compare against upstream.
ORIGINALS: dict[str, Callable[..., Any]] = {}


@dataclass(frozen=True)
class Wrapped:
    """A third-party attribute a hook replaces or relies on: ``"module:Qualified.name"``, and the parameters its
    wrapper passes on by name or position (checked against the installed signature)."""

    path: str
    parameters: tuple[str, ...] = ()
    #: only checked where the module is already imported (bitsandbytes: importing it costs seconds)
    when_imported: bool = False

    def problem(self) -> str | None:
        """Why the installed library does not have this attribute as the hook expects it (None: it does)."""
        module_name, _, qualified = self.path.partition(":")
        if self.when_imported and module_name.split(".")[0] not in sys.modules:
            return None
        try:
            found: Any = importlib.import_module(module_name)
        except Exception as error:  # noqa: BLE001 - a module that fails to import is missing for the hook
            return f"{module_name} cannot be imported ({type(error).__name__})"
        for part in qualified.split("."):
            if part not in vars(found) and not hasattr(found, part):
                return f"{module_name} has no {qualified}"
            found = getattr(found, part)
        if self.parameters:
            try:
                names = list(inspect.signature(found).parameters)
            except (TypeError, ValueError):
                return None
            lacking = [name for name in self.parameters if name not in names]
            if lacking:
                return f"{module_name}.{qualified} takes no {', '.join(lacking)} (its signature changed)"
        return None


@dataclass(frozen=True)
class SkippedHook:
    """A hook that was not installed: why, and the matrix cells ((row, layer kinds), ``"*"``: every kind) that only
    work with it, which are refused instead."""

    reason: str
    refuses: tuple[tuple[str, tuple[str, ...]], ...] = ()


#: hook name -> why it was skipped on the installed PEFT (filled by peft_hooks.install, read by the matrix)
SKIPPED: dict[str, SkippedHook] = {}


def skipped_hook_for(row: str, kind: str) -> tuple[str, SkippedHook] | None:
    """The skipped hook (name, record) that a matrix cell depends on, if any."""
    for name, skipped in SKIPPED.items():
        if any(refused == row and ("*" in kinds or kind in kinds) for refused, kinds in skipped.refuses):
            return name, skipped
    return None

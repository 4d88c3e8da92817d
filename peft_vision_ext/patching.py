"""The bookkeeping every patch of a third-party callable shares (base layer: imports nothing of the package).

A patch marks its wrapper with :data:`HOOK_MARK` so that installing it twice changes nothing, and keeps the
callable it replaced in :data:`ORIGINALS` (tests compare against upstream). The list of patches, with their reasons
and version gates, is :data:`peft_vision_ext.peft_hooks.HOOKS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Set (to True) on every wrapper a hook installs: a callable carrying it is already ours.
HOOK_MARK = "__peft_vision_ext_hook__"
#: The third-party callables each hook wrapped (hook name -> original), for tests that compare against upstream.
ORIGINALS: dict[str, Callable[..., Any]] = {}

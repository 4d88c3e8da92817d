"""The one way the bitsandbytes hooks patch ``bitsandbytes.nn.Linear4bit``: once, marked, and not at all without it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def wrap_linear4bit(attribute: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace ``Linear4bit.<attribute>`` by ``wrap(original)`` (idempotent; nothing without a usable bitsandbytes)."""
    try:
        import bitsandbytes as bnb
    except Exception:  # noqa: BLE001 - no usable bitsandbytes: nothing to patch
        return

    from . import _MARK

    cls = bnb.nn.Linear4bit
    original = getattr(cls, attribute)
    if getattr(original, _MARK, False):
        return
    wrapped = functools.wraps(original)(wrap(original))
    setattr(wrapped, _MARK, True)
    setattr(cls, attribute, wrapped)

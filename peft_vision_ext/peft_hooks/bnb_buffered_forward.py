"""Hook: a frozen bitsandbytes 4-bit layer computes through one reusable dequantization buffer on CPU."""

from __future__ import annotations

import functools
import sys
from typing import Any


def _install_bnb_buffered_forward() -> None:
    # Importing bitsandbytes costs seconds: only when it is already loaded (recent PEFT releases import it, 0.17 does
    # not). Otherwise quantize() and bnb_config(), which are about to build 4-bit layers, patch it themselves.
    if "bitsandbytes" in sys.modules:
        patch_linear4bit_forward()


def patch_linear4bit_forward() -> None:
    """``Linear4bit.forward`` takes the buffered path where it applies, bitsandbytes' own otherwise (idempotent)."""
    # Why: on CPU bitsandbytes (0.50.2 here) allocates the whole dequantized weight anew at every forward and
    # backward of a 4-bit layer; under glibc's default malloc those transients inflate a training step's resident
    # memory (measured in benchmarks/quantized_vit_memory.py). quantization/buffered_4bit.py says when the buffered
    # path applies (frozen CPU layers in the standard layout, fp32 compute) and hands every other call back.
    # Not a PEFT internal, but the same rule holds: one hook, in one place.
    try:
        import bitsandbytes as bnb
    except Exception:  # noqa: BLE001 - no usable bitsandbytes: nothing to patch
        return

    from . import _MARK

    cls = bnb.nn.Linear4bit
    original = cls.forward
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        from ..quantization.buffered_4bit import buffered_forward, takes_buffered_path

        if not args and not kwargs:
            fix = getattr(sys.modules.get("bitsandbytes.nn.modules"), "fix_4bit_weight_quant_state_from_module", None)
            if fix is not None:
                fix(self)  # as bitsandbytes' forward does first: a weight that lost its quant_state gets it back
            if takes_buffered_path(self, x):
                return buffered_forward(self, x)
        return original(self, x, *args, **kwargs)

    setattr(forward, _MARK, True)
    cls.forward = forward

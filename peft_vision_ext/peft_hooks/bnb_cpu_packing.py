"""Hook: new bitsandbytes 4-bit layers do not repack their weights in place at an eval forward on AVX512-BF16 CPUs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._linear4bit import wrap_linear4bit


def _install_bnb_cpu_packing() -> None:
    # Importing bitsandbytes costs seconds and loads torch extras: only when it is already loaded (recent PEFT
    # releases import it, 0.17 does not). Otherwise quantized_linear() (behind quantize()) and bnb_config(), which
    # are about to build 4-bit layers, call patch_bitsandbytes() themselves, and the injection and merge guards
    # unpack layers bitsandbytes repacked before either ran.
    import sys

    if "bitsandbytes" in sys.modules:
        patch_linear4bit_init()


def patch_linear4bit_init() -> None:
    """New ``Linear4bit`` layers start with bitsandbytes' in-place CPU repack off (idempotent)."""
    # Why: bitsandbytes (0.50.2 here; every release with _convert_weight_packed_for_cpu) on an AVX512-BF16 CPU
    # repacks a Linear4bit's weight in place at its first eval forward without gradients (bf16 statistics, another
    # nibble order): training afterwards raises, dequantizing and PEFT's merges read the weights wrong, widths that
    # are not a multiple of 32 assert, and the repack cannot be undone exactly. A vision fine-tune evaluates before
    # it trains, so every Linear4bit built from here on (by quantize(), transformers' from_pretrained, PEFT) starts
    # with the per-layer switch off; quantization.enable_inference_packing(model) turns it on for inference-only
    # models. Not a PEFT internal, but the same rule holds: one hook, in one place. A bitsandbytes without the repack
    # is left alone.
    try:
        import bitsandbytes.functional as bnbf
    except Exception:  # noqa: BLE001 - no usable bitsandbytes: nothing to hold off
        return
    if hasattr(bnbf, "_convert_weight_packed_for_cpu"):
        wrap_linear4bit("__init__", _switched_off_at_init)


def _switched_off_at_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        from ..quantization.cpu_packing import default_switch_off

        original(self, *args, **kwargs)
        default_switch_off(self)

    return __init__

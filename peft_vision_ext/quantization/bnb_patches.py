"""The bitsandbytes patches (two entries of :data:`peft_vision_ext.peft_hooks.HOOKS`): ``Linear4bit.__init__`` holds
off bitsandbytes' in-place CPU repack, ``Linear4bit.forward`` takes the buffered dequantization path. They live next
to the code they serve; the hooks registry installs them at import where bitsandbytes is already loaded, and
:func:`patch_bitsandbytes` applies them before this package builds or configures 4-bit layers.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from ..layers.cpu_packing import default_switch_off
from ..patching import HOOK_MARK
from .buffered_4bit import buffered_forward, takes_buffered_path


def patch_bitsandbytes() -> None:
    """Apply the bitsandbytes patches now (bitsandbytes is about to build 4-bit layers; idempotent).

    The hooks patch bitsandbytes at install time only where it is already imported (importing it costs seconds);
    ``quantize()`` and ``bnb_config()`` call this before they build or configure 4-bit layers.
    """
    patch_linear4bit_init()
    patch_linear4bit_forward()


def wrap_linear4bit(attribute: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Replace ``Linear4bit.<attribute>`` by ``wrap(original)`` (idempotent; nothing without a usable bitsandbytes)."""
    try:
        import bitsandbytes as bnb
    except Exception:  # noqa: BLE001 - no usable bitsandbytes: nothing to patch
        return

    cls = bnb.nn.Linear4bit
    original = getattr(cls, attribute)
    if getattr(original, HOOK_MARK, False):
        return
    wrapped = functools.wraps(original)(wrap(original))
    setattr(wrapped, HOOK_MARK, True)
    setattr(cls, attribute, wrapped)


def install_cpu_packing() -> None:
    # Importing bitsandbytes costs seconds and loads torch extras: only when it is already loaded (recent PEFT
    # releases import it, 0.17 does not). Otherwise quantized_linear() (behind quantize()) and bnb_config(), which
    # are about to build 4-bit layers, call patch_bitsandbytes() themselves, and the injection and merge guards
    # unpack layers bitsandbytes repacked before either ran.
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
        original(self, *args, **kwargs)
        default_switch_off(self)

    return __init__


def install_buffered_forward() -> None:
    # Importing bitsandbytes costs seconds: only when it is already loaded (recent PEFT releases import it, 0.17 does
    # not). Otherwise quantize() and bnb_config(), which are about to build 4-bit layers, patch it themselves.
    if "bitsandbytes" in sys.modules:
        patch_linear4bit_forward()


def patch_linear4bit_forward() -> None:
    """``Linear4bit.forward`` takes the buffered path where it applies, bitsandbytes' own otherwise (idempotent)."""
    # Why: on CPU bitsandbytes (0.50.2 here) allocates the whole dequantized weight anew at every forward and
    # backward of a 4-bit layer, and under glibc's default malloc a training step's freed temporaries stay resident
    # (ViT-B/16 with checkpointing: RSS grew ~0.6 GB for a 0.2 GB tensor peak; benchmarks/quantized_vit_memory.py).
    # quantization/buffered_4bit.py dequantizes into one buffer and releases freed heap pages as training goes; it
    # says when the path applies (frozen CPU layers in the standard layout, fp32 compute) and hands every other call
    # back. Not a PEFT internal, but the same rule holds: one hook, in one place.
    wrap_linear4bit("forward", _buffered_where_it_applies)


def _buffered_where_it_applies(original: Callable[..., Any]) -> Callable[..., Any]:
    def forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        _refuse_lost_quant_state(self)
        if not args and not kwargs:
            fix = getattr(sys.modules.get("bitsandbytes.nn.modules"), "fix_4bit_weight_quant_state_from_module", None)
            if fix is not None:
                fix(self)  # as bitsandbytes' forward does first: a weight that lost its quant_state gets it back
            if takes_buffered_path(self, x):
                return buffered_forward(self, x)
        return original(self, x, *args, **kwargs)

    return forward


def _refuse_lost_quant_state(layer: Any) -> None:
    """A Linear4bit whose weight is a plain tensor without quantization state cannot compute; bitsandbytes would fail
    with "quant_state is required". The known cause is FSDP: ``fully_shard`` gathers the packed weight into a plain
    parameter at forward, dropping the ``Params4bit`` object that carried the state."""
    weight = layer.weight
    if type(weight).__name__ == "Params4bit" or getattr(weight, "quant_state", None) is not None \
            or getattr(layer, "quant_state", None) is not None:
        return
    raise RuntimeError(
        "bitsandbytes Linear4bit: its 4-bit weight arrived as a plain tensor without quantization state, which "
        "happens when FSDP (fully_shard) shards quantized weights. Keep them out of sharding: "
        "peft_vision_ext.distributed.shard_model(model), or fully_shard(..., "
        "ignored_params=peft_vision_ext.distributed.quantized_parameters(model)).")

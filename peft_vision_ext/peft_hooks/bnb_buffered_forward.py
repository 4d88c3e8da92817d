"""Hook: a frozen bitsandbytes 4-bit layer computes through one reusable dequantization buffer on CPU."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ._linear4bit import wrap_linear4bit


def _install_bnb_buffered_forward() -> None:
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
        from ..quantization.buffered_4bit import buffered_forward, takes_buffered_path

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

"""bitsandbytes' AVX512-BF16 CPU layout for 4-bit weights: kept off for models that train, undone where it happened,
turned on for inference only when asked.

On a CPU with AVX512-BF16, bitsandbytes (0.50.2 here) repacks a ``Linear4bit``'s weight *in place* at its first
forward in eval mode with an input that needs no gradient (``support_avx512bf16_for_cpu``): the nibbles are
reordered for its fused kernel and the block statistics (absmax, double-quantized or not) become bf16. After that
one "accuracy before fine-tuning" forward, training raises (an in-place change of a leaf view), dequantizing and
PEFT's merges read the new layout as the old one (wrong shapes or silently wrong weights), and a layer whose
``out_features`` is not a multiple of 32 asserts. The repack is irreversible in general: bf16 statistics lose about
2e-3 of their relative precision.

:func:`keep_unpacked` switches the repack off for every 4-bit layer of a model (the ``bnb-cpu-packing`` hook does the
same for every layer built once bitsandbytes is patched: at ``import peft_vision_ext`` where PEFT has loaded it, or at
the first ``quantize()`` / ``bnb_config()``) and converts layers that were already repacked back to
bitsandbytes' standard layout, *exactly as they compute now*: the nibbles are restored losslessly and the bf16
statistics become fp32 without a second quantization, so the layer keeps computing with the same weights.
:func:`enable_inference_packing` opts a model that will only run inference into the packed kernel.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import name_list
from .kinds import LayerKind, layer_kind

#: bitsandbytes' per-layer switch (Linear4bit attribute) and the quant-state flag of the packed layout.
SWITCH = "support_avx512bf16_for_cpu"
PACKED_FLAG = "packing_format_for_cpu"
#: The packed kernel's geometry: out_features in blocks of 32 rows, in_features in pairs of nibbles.
BLOCK_N = 32


def cpu_takes_packed_path() -> bool:
    """Whether bitsandbytes would repack 4-bit weights on this CPU (AVX512-BF16 and a bitsandbytes that does)."""
    try:
        import bitsandbytes.functional as bnbf
    except Exception:  # noqa: BLE001 - no bitsandbytes: no repack
        return False
    return hasattr(bnbf, "_convert_weight_packed_for_cpu") and bool(bnbf.has_avx512bf16())


def _four_bit_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if layer_kind(module) is LayerKind.BNB_4BIT]


def is_packed(module: nn.Module) -> bool:
    """Whether a bitsandbytes ``Linear4bit`` holds its weight in the AVX512-BF16 CPU layout."""
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    return bool(getattr(state, PACKED_FLAG, False))


@torch.no_grad()
def unpack(module: nn.Module) -> None:
    """Back to bitsandbytes' standard 4-bit layout, computing with exactly the weights the packed layer used.

    The nibble order is restored by bitsandbytes' own inverse (lossless); the statistics are the packed layer's bf16
    absmax as fp32 in the standard block order, not double-quantized again (bitsandbytes' inverse re-quantizes them,
    which would change the weights a second time).
    """
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    weight = module.weight
    state = weight.quant_state
    rows, columns = state.shape
    absmax = state.absmax.float().T.reshape(-1).contiguous()  # packed as [K / blocksize, N]
    if absmax.numel() != rows * columns // state.blocksize:
        raise RuntimeError(f"unexpected packed statistics {tuple(state.absmax.shape)} for a {rows}x{columns} weight")
    # The inverse rewrites fields of the state it gets: hand it a copy, keep only the restored nibbles.
    data, _ = _convert_weight_packed_for_cpu_inverse(weight.data, copy.copy(state))
    state.absmax = absmax
    state.nested = False
    state.dtype = getattr(state, "original_dtype", torch.float32)
    for attribute in ("state2", "offset"):
        if hasattr(state, attribute):
            delattr(state, attribute)
    setattr(state, PACKED_FLAG, False)
    weight.data = data
    if getattr(module, "quant_state", None) is not None:
        module.quant_state = state


def keep_unpacked(model: nn.Module) -> None:
    """Switch bitsandbytes' CPU repack off for every 4-bit layer of ``model``; unpack layers it already repacked.

    A warning names the layers that had been repacked (their statistics were rounded to bf16 by bitsandbytes, so
    they differ slightly from a freshly quantized copy of the same weights). Idempotent and cheap when nothing is
    packed.
    """
    unpacked = []
    for name, module in _four_bit_layers(model):
        if hasattr(module, SWITCH):
            setattr(module, SWITCH, False)
        if is_packed(module):
            unpack(module)
            unpacked.append(name)
    if unpacked:
        warnings.warn(
            f"peft-vision-ext: bitsandbytes had repacked {len(unpacked)} 4-bit layers ({name_list(unpacked)}) for its "
            "AVX512-BF16 CPU kernel at an eval forward, with their statistics rounded to bf16; they are back in the "
            "standard layout (so they can train, merge and save) and compute as they did, but differ by that "
            "rounding (~2e-3 relative) from a freshly quantized copy. Import peft_vision_ext before the first forward "
            "to keep them exact.", UserWarning, stacklevel=3)


def enable_inference_packing(model: nn.Module) -> list[str]:
    """Let bitsandbytes use its AVX512-BF16 CPU kernel for ``model``'s 4-bit layers: for inference only.

    The layers repack themselves at their next eval forward without gradients. Layers the packed kernel cannot hold
    (``out_features`` not a multiple of 32, odd ``in_features``) stay unpacked. Returns the paths switched on; an
    empty list on a CPU without AVX512-BF16. Training, merging or dequantizing such a model later first unpacks it
    (with the bf16 rounding :func:`keep_unpacked` warns about).
    """
    if not cpu_takes_packed_path():
        return []
    enabled = []
    for name, module in _four_bit_layers(model):
        if module.out_features % BLOCK_N == 0 and module.in_features % 2 == 0 and hasattr(module, SWITCH):
            setattr(module, SWITCH, True)
            enabled.append(name)
    return enabled


def default_switch_off(layer: nn.Module) -> None:
    """Called for every new ``Linear4bit`` (hook ``bnb-cpu-packing``): no in-place repack unless asked for."""
    if hasattr(layer, SWITCH):
        setattr(layer, SWITCH, False)


@contextlib.contextmanager
def repack_held_off(model: nn.Module) -> Iterator[None]:
    """No in-place repack during a read-only forward (the probe's); each layer's switch is restored after."""
    layers = [module for _, module in _four_bit_layers(model) if getattr(module, SWITCH, False)]
    for module in layers:
        setattr(module, SWITCH, False)
    try:
        yield
    finally:
        for module in layers:
            setattr(module, SWITCH, True)

"""The frozen 4-bit base of a LoRA layer on CPU: one reusable dequantization buffer, and freed memory handed back.

bitsandbytes' CPU path (0.50.2 here) dequantizes a ``Linear4bit``'s whole weight into a freshly allocated fp32
tensor at every forward, and again in every backward (and per recomputed forward under gradient checkpointing):
ViT-B/16 allocates and frees 7-9 MB per layer call, a few hundred times per step. Here the weight is dequantized
into one buffer per thread (as large as the largest layer, reused by every layer), with bitsandbytes' own CPU kernel
where its library has the entry point and a torch lookup otherwise (both equal bitsandbytes' ``dequantize_4bit``
bit for bit). An autograd function keeps nothing for backward but the layer: the base is frozen, so the input
gradient is all it needs, computed from the weight dequantized again into the buffer (the same recomputation
bitsandbytes does). Outputs and input gradients equal bitsandbytes' path exactly.

Measured (benchmarks/quantized_vit_memory.py), the weight transients are a small part of a step's resident memory:
under glibc's default malloc every large temporary of the step (attention scores, MLP activations) comes from the
heap once the first large free has raised the mmap threshold, and freed heap pages stay resident. So training calls
through this path also hand freed heap pages back to the OS whenever the resident set has grown by 128 MiB since
the last time (:func:`release_freed_memory`; an action, not an allocator setting).

It applies only where it can: a CPU ``Linear4bit`` in bitsandbytes' standard layout (not repacked for its
AVX512-BF16 inference kernel, and not about to be), frozen weight and bias, fp32 compute, nf4/fp4, whole blocks;
every other call goes to bitsandbytes unchanged. :func:`set_buffered_dequantization` switches the path off
process-wide, :func:`set_release_freed_memory` only the release.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
from typing import Any

import torch
from torch import nn

_enabled = True
_release = True
_local = threading.local()


def set_buffered_dequantization(enabled: bool) -> None:
    """Switch the buffered 4-bit path on (default) or off (every 4-bit forward then goes to bitsandbytes)."""
    global _enabled
    _enabled = bool(enabled)


def set_release_freed_memory(enabled: bool, every_bytes: int | None = None) -> None:
    """Training through buffered 4-bit layers hands freed heap memory back to the OS as it goes (default on, every
    128 MiB of resident-set growth; Linux with glibc only). No allocator setting is changed: see
    :func:`release_freed_memory`. A smaller ``every_bytes`` lowers the peak further and costs more time (released
    pages are faulted in again when reused)."""
    global _release, RELEASE_EVERY_BYTES
    if every_bytes is not None and every_bytes < 0:
        raise ValueError(f"set_release_freed_memory: every_bytes must be >= 0 (bytes of resident-set growth between "
                         f"releases); got {every_bytes}")
    _release = bool(enabled)
    if every_bytes is not None:
        RELEASE_EVERY_BYTES = int(every_bytes)


#: Resident-set growth since the last release after which the next frozen 4-bit layer call releases again. Measured
#: on ViT-B/16 (benchmarks/quantized_vit_memory.py): 64 MiB cut the peak a little more than 128 MiB at ~6 % more
#: step time, 256 MiB kept ~0.15 GB more resident.
RELEASE_EVERY_BYTES = 128 << 20


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` (None elsewhere: other C libraries, macOS, Windows)."""
    if not sys.platform.startswith("linux") or not os.path.exists("/proc/self/statm"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _resident_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE


def release_freed_memory(every_bytes: int | None = None) -> bool:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``) once the resident set has grown by
    ``every_bytes`` since the last release. Returns whether it released.

    Why: under glibc's default malloc, a training step's large temporaries (attention scores, MLP activations,
    dequantized weights) come from the heap after the first large free raised the mmap threshold, and freed heap
    pages stay resident: ViT-B/16's 4-bit LoRA step with checkpointing grew RSS by ~0.6 GB for a tensor-level
    peak of ~0.2 GB. Releasing as the step goes keeps RSS near what tensors need. It is an action, not a setting: the
    allocator's thresholds stay as they are (``MALLOC_MMAP_THRESHOLD_`` is the process-wide alternative, opt-in).
    """
    trim = _malloc_trim() if _release else None
    if trim is None:
        return False
    every_bytes = RELEASE_EVERY_BYTES if every_bytes is None else every_bytes
    if _resident_bytes() < getattr(_local, "released_at", 0) + every_bytes:
        return False
    trim(0)
    _local.released_at = _resident_bytes()
    return True


def _buffer(numel: int, device: torch.device) -> torch.Tensor:
    """This thread's fp32 buffer of at least ``numel`` elements (grown, never shrunk)."""
    buffers = _local.__dict__.setdefault("buffers", {})
    buffer = buffers.get(device)
    if buffer is None or buffer.numel() < numel:
        buffers[device] = buffer = torch.empty(numel, dtype=torch.float32, device=device)
    return buffer[:numel]


def buffer_bytes() -> int:
    """Bytes this thread's buffers hold (for memory accounting)."""
    return sum(b.numel() * b.element_size() for b in _local.__dict__.get("buffers", {}).values())


def _absmax(state: Any) -> torch.Tensor:
    """The per-block scales in fp32 (double quantization undone as bitsandbytes does it)."""
    if getattr(state, "nested", False):
        import bitsandbytes.functional as bnbf

        return (bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset).float()
    return state.absmax.float()


@functools.cache
def _kernel(quant_type: str) -> Any:
    """bitsandbytes' CPU dequantization kernel writing into a given output (None where its library lacks it)."""
    try:
        from bitsandbytes.cextension import lib
    except Exception:  # noqa: BLE001 - no native library: the torch lookup is used
        return None
    # The ctypes library itself: bitsandbytes' wrapper returns a stub that raises for a missing entry point.
    return getattr(getattr(lib, "_lib", None), f"cdequantize_blockwise_cpu_{quant_type}_fp32", None)


def _pair_table(code: torch.Tensor) -> torch.Tensor:
    """A 256 x 2 table: the two 4-bit codes a packed byte holds (high nibble first, as bitsandbytes packs)."""
    code = code.float()
    return torch.stack([code.repeat_interleave(16), code.repeat(16)], dim=1).contiguous()


@torch.no_grad()
def dequantize_into(weight: torch.Tensor, state: Any, out: torch.Tensor, native: bool = True) -> torch.Tensor:
    """Write the fp32 weight of a standard-layout 4-bit ``weight`` into ``out`` (``rows * columns`` elements)."""
    rows, columns = state.shape
    out = out.view(rows, columns)
    packed = weight.data.view(torch.uint8).reshape(-1)
    absmax = _absmax(state)
    # bitsandbytes itself avoids its kernel for blocks of 2048 and more (accuracy of its AVX512 variant).
    kernel = _kernel(state.quant_type) if native and state.blocksize < 2048 else None
    if kernel is not None:
        packed = packed.contiguous()
        kernel(ctypes.c_void_p(packed.data_ptr()), ctypes.c_void_p(absmax.data_ptr()),
               ctypes.c_void_p(out.data_ptr()), ctypes.c_longlong(state.blocksize), ctypes.c_longlong(rows),
               ctypes.c_longlong(columns))
        return out
    # torch lookup: each packed byte indexes its pair of codes, then every block is scaled by its absmax.
    indices = packed.to(torch.int32)
    torch.index_select(_pair_table(state.code.to(out.device)), 0, indices, out=out.view(-1, 2))
    out.view(-1, state.blocksize).mul_(absmax.view(-1, 1))
    return out


def takes_buffered_path(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``layer(x)`` (a bitsandbytes ``Linear4bit``) can run through the buffered path."""
    if not _enabled or x.device.type != "cpu":
        return False
    weight = layer.weight
    state = getattr(weight, "quant_state", None)
    if state is None or weight.requires_grad or weight.device.type != "cpu":
        return False
    if layer.bias is not None and layer.bias.requires_grad:
        return False
    if getattr(state, "packing_format_for_cpu", False) or getattr(layer, "support_avx512bf16_for_cpu", False):
        return False  # bitsandbytes' packed inference kernel (or a repack it is about to make) owns this layer
    if state.quant_type not in ("nf4", "fp4") or len(getattr(state, "shape", ())) != 2:
        return False
    rows, columns = state.shape
    if (rows, columns) != (layer.out_features, layer.in_features) or columns % 2 or (rows * columns) % state.blocksize:
        return False
    compute_dtype = layer.compute_dtype if layer.compute_dtype is not None else x.dtype
    return compute_dtype == torch.float32 and x.is_floating_point()


def _dequantized(layer: nn.Module, device: torch.device) -> torch.Tensor:
    """``layer``'s fp32 weight, in this thread's buffer (valid until the next call)."""
    state = layer.weight.quant_state
    return dequantize_into(layer.weight, state, _buffer(state.shape[0] * state.shape[1], device))


class _FrozenLinear4bit(torch.autograd.Function):
    """y = x W^T + b for a frozen 4-bit W; backward gives the input gradient only (W dequantized again)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: nn.Module, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.layer = layer
        return nn.functional.linear(x, _dequantized(layer, x.device).to(x.dtype), bias)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        release_freed_memory()
        weight = _dequantized(ctx.layer, grad_output.device)
        return torch.matmul(grad_output, weight.to(grad_output.dtype)), None, None


def buffered_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``Linear4bit.forward`` through the reusable buffer (call only where :func:`takes_buffered_path` holds)."""
    if torch.is_grad_enabled() and x.requires_grad:  # training: inference steps hold no activations to speak of
        release_freed_memory()
    input_dtype = x.dtype
    x = x.to(torch.float32)
    bias = layer.bias
    if bias is not None and bias.dtype != torch.float32:
        bias = bias.float()
    return _FrozenLinear4bit.apply(x, layer, bias).to(input_dtype)

"""``peft-vision env``: what is installed, which add-ons are active, whether bitsandbytes can quantize here."""

from __future__ import annotations

import platform

from .layers.cpu_packing import cpu_takes_packed_path
from .peft_hooks import HOOKS, active_hooks
from .versions import REPORTED_DISTRIBUTIONS, __version__, installed_version


def bitsandbytes_quantize_check(device: str | None = None) -> tuple[bool, str]:
    """Quantize a small tensor to nf4 and back on ``device`` (default: cuda if available, else cpu)."""
    try:
        import bitsandbytes.functional as bnbf
        import torch
    except Exception as error:  # noqa: BLE001 - any import failure means "cannot quantize"
        return False, f"bitsandbytes not importable: {error}"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        weight = torch.randn(64, 64, device=device)
        packed, state = bnbf.quantize_4bit(weight, quant_type="nf4")
        error = (bnbf.dequantize_4bit(packed, state) - weight).abs().max().item()
    except Exception as error:  # noqa: BLE001
        return False, f"nf4 quantization failed on {device}: {type(error).__name__}: {error}"
    return True, f"nf4 round trip on {device}: {packed.numel()} bytes for 4096 weights, max error {error:.3f}"


def cpu_path() -> str:
    """Which 4-bit code path bitsandbytes takes on this CPU, and what the plugin does about it."""
    if cpu_takes_packed_path():
        return ("AVX512-BF16: bitsandbytes would repack 4-bit weights in place at the first eval forward (bf16 "
                "statistics, breaks training and merging); peft-vision-ext keeps them unpacked, "
                "enable_inference_packing(model) opts an inference-only model in")
    return "standard (no AVX512-BF16 repack on this CPU)"


def report() -> str:
    lines = [f"peft-vision-ext {__version__}", f"python {platform.python_version()} ({platform.machine()})"]
    for module, distribution in REPORTED_DISTRIBUTIONS.items():
        version = installed_version(module)
        lines.append(f"{distribution:<16} {version if version is not None else 'not installed'}")
    hooks = {hook.name: hook for hook in HOOKS}
    lines.append("add-ons active for this peft:")
    for name in active_hooks():
        lines.append(f"  - {name}: {hooks[name].why}")
    ok, detail = bitsandbytes_quantize_check()
    lines.append(f"bitsandbytes can quantize: {'yes' if ok else 'no'} ({detail})")
    lines.append(f"bitsandbytes 4-bit CPU path: {cpu_path()}")
    return "\n".join(lines)

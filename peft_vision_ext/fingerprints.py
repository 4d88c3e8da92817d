"""Fingerprints of base-model tensors: what an adapter records of the weights it was trained on, and what
``load_adapter`` checks a base against. Below hub/ (which writes and checks them) and quantization/ (which records
the full-precision originals of a quantized residual)."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

#: On a base model whose weights a LoRA init rewrote (PiSSA, OLoRA, CorDA, LoftQ): ``name -> (hash of the residual,
#: hash of the original)``, set by the ``base-rewriting-init-save`` hook (peft_hooks/rewriting_inits.py), or by
#: quantization/residual.py for a quantized residual (hash of the original None: a quantization-state tensor).
ORIGINAL_FINGERPRINT = "__peft_vision_ext_original_fingerprint__"


def under(name: str, prefixes: list[str] | tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def fingerprint(state: dict[str, torch.Tensor], skip_prefixes: list[str]) -> dict[str, str]:
    """SHA-256 (16 hex digits) of every tensor, by name, leaving out the heads (they are retrained)."""
    prints = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or under(name, skip_prefixes):
            continue
        data = tensor.detach().to("cpu").contiguous()
        digest = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        prints[name] = digest.hexdigest()[:16]
    return prints


def original_weights_fingerprint(base: nn.Module, prints: dict[str, str]) -> dict[str, str]:
    """``prints`` with each rewritten weight that still holds its residual reported by its original hash: adapters
    of rewriting inits are saved relative to the original base (PEFT's conversion), which load_adapter checks."""
    rewritten = base.__dict__.get(ORIGINAL_FINGERPRINT) or {}
    reported = {}
    for name, value in prints.items():
        current, original = rewritten.get(name, (None, None))
        if current != value:
            reported[name] = value
        elif original is not None:  # None: a tensor the original did not have (a quantized residual's state)
            reported[name] = original
    return reported

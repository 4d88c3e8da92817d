"""Initialisations of AdaLoRA's SVD-form factors ``B · diag(E) · A`` that start learning like LoRA.

PEFT starts ``E = 0`` and ``A, B ~ N(0, 0.02)``: the update is a product of three small factors, so for the first
steps only ``E`` (r numbers per layer) receives a gradient and ``A``/``B`` stay almost flat. Long NLP runs recover;
short vision fine-tunes lose several points to LoRA (issue 17, benchmarks/adalora_vision.py).

- ``"peft"``: PEFT's own initialisation, untouched.
- ``"orthonormal"``: ``A`` with orthonormal rows, ``B`` with orthonormal columns, ``E = 0``. The factors start where
  AdaLoRA's orthogonal regulariser wants them (``P Pᵀ = I``), the update is zero and linear in ``E`` at once, and the
  singular values ``E`` carry the whole scale, as the SVD form intends.

Either way the result is plain tensors in PEFT's own parameters: a saved adapter loads in plain PEFT unchanged.

Default: ``"orthonormal"`` for every AdaLoRA adapter injected into a model of a registered vision family (or built
with :func:`peft_vision_ext.preset_config`); ``"peft"`` elsewhere. ``use_adalora_init(config, "peft")`` keeps PEFT's
initialisation. The choice lives in the config's ``__dict__``, outside its dataclass fields, so
``adapter_config.json`` stays PEFT's own (a reload overwrites the factors with the saved ones anyway).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from ..card_facts import PRESET_ATTRIBUTE
from ..families import detect_family
from ..targets import method_name

AdaLoraInit = Literal["peft", "orthonormal"]
INITS: tuple[str, ...] = ("peft", "orthonormal")
VISION_DEFAULT: AdaLoraInit = "orthonormal"
REQUEST_ATTRIBUTE = "_pve_adalora_init"


def use_adalora_init(config: Any, scheme: AdaLoraInit) -> Any:
    """Choose how the AdaLoRA layers of ``config`` start (``"orthonormal"`` or ``"peft"``); returns ``config``."""
    if scheme not in INITS:
        raise ValueError(f"use_adalora_init: {scheme!r} is not one of {INITS}")
    if method_name(config) != "adalora":
        raise ValueError(f"use_adalora_init needs an AdaLoraConfig, got {type(config).__name__}")
    config.__dict__[REQUEST_ATTRIBUTE] = scheme
    return config


def requested_init(config: Any, model: Any) -> str:
    """The scheme for ``config`` on ``model``: the explicit choice, else the vision default on vision models."""
    scheme = config.__dict__.get(REQUEST_ATTRIBUTE)
    if scheme is not None:
        return scheme

    if config.__dict__.get(PRESET_ATTRIBUTE):
        return VISION_DEFAULT
    detection = detect_family(model)
    return VISION_DEFAULT if detection is not None and detection.registered else "peft"


def apply_requested_init(tuner: Any, model: Any, adapter: str) -> None:
    """After PEFT injected ``adapter``: re-initialise its AdaLoRA factors as requested (no-op for other methods)."""
    config = tuner.peft_config[adapter]
    if method_name(config) != "adalora":
        return
    if not getattr(config, "init_lora_weights", True):
        return  # init_lora_weights=False: the user asked for PEFT's random (non-zero) start, for tests
    initialize(tuner, adapter, requested_init(config, model))


@torch.no_grad()
def initialize(tuner: Any, adapter: str, scheme: str) -> int:
    """Re-initialise every AdaLoRA layer of ``tuner`` (an AdaLoraModel) for ``adapter`` with ``scheme``.

    Returns the number of layers changed. Factors on the meta device (``low_cpu_mem_usage`` loads) are skipped: their
    values come from the checkpoint.
    """
    if scheme not in INITS:
        raise ValueError(f"AdaLoRA init {scheme!r} is not one of {INITS}")
    if scheme == "peft":
        return 0
    from peft.tuners.adalora.layer import AdaLoraLayer

    changed = 0
    for module in tuner.model.modules():
        if not isinstance(module, AdaLoraLayer) or adapter not in module.lora_A:
            continue
        lora_a, lora_e, lora_b = module.lora_A[adapter], module.lora_E[adapter], module.lora_B[adapter]
        if lora_a.is_meta or lora_a.numel() == 0:
            continue
        lora_a.copy_(_orthonormal(lora_a.shape, lora_a.dtype, lora_a.device))
        lora_b.copy_(_orthonormal(lora_b.shape, lora_b.dtype, lora_b.device))
        lora_e.zero_()
        changed += 1
    return changed


def _orthonormal(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Orthonormal rows (wide matrices) or columns (tall ones), drawn in float32 from torch's global RNG."""
    matrix = torch.empty(shape, dtype=torch.float32)
    torch.nn.init.orthogonal_(matrix)
    return matrix.to(device=device, dtype=dtype)

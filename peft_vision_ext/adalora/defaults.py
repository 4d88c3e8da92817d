"""AdaLoRA's vision defaults, as data: what ``preset_config(model, "adalora", ...)``, ``recommend()`` and the quick
start fill in when the user leaves a field open. Measured in ``benchmarks/adalora_vision.py`` (README: AdaLoRA).

- Budget comparable to LoRA: ``r=...`` means "the final budget of a LoRA of rank r": ``target_r = r`` and
  ``init_r = 1.5 r`` (PEFT's own 12 -> 8 ratio); without ``r``, PEFT's 12 -> 8.
- Scale: AdaLoRA multiplies its update by ``lora_alpha / init_r``. With orthonormal factors (:mod:`.init`) the
  singular values ``E`` carry the whole update, one number per rank, so under Adam the update grows ~``lr`` per
  step times that scale, where a LoRA's ``B`` grows in every entry; ``lora_alpha = ALPHA_PER_RANK x init_r`` lets
  the singular values move as fast as a LoRA update. Saved in ``adapter_config.json``: plain PEFT reloads it.
- Initialisation: orthonormal (:mod:`.init`).
- Orthogonal regulariser weight 0. ``AdaLoraCallback`` and this package's loops apply the regulariser with the
  config's ``orth_reg_weight`` (PEFT's 0.5 for a config built by hand), but in these short vision fine-tunes every
  weight tried cost accuracy (ViT task, paired seeds: 0.5 about -3 points, 0.1 -1.5, 0.02 -1.4): PEFT's term is the
  unsquared Frobenius norm, whose gradient keeps a constant size however close the factors are to orthonormal, and
  under Adam it outweighs the small loss gradients of A and B while E is small. The factors start orthonormal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VisionAdaLoraDefaults:
    init_over_target: float = 1.5
    alpha_per_rank: float = 32.0
    orth_reg_weight: float = 0.0  # measured: see the module docstring and benchmarks/adalora_vision.py


VISION_DEFAULTS = VisionAdaLoraDefaults()


def vision_adalora_kwargs(kwargs: dict[str, Any], defaults: VisionAdaLoraDefaults = VISION_DEFAULTS) -> dict[str, Any]:
    """``kwargs`` for ``AdaLoraConfig`` with the vision defaults filled in where the caller left them out.

    ``r`` (if given) is read as the LoRA rank whose final budget AdaLoRA should match; ``init_r``/``target_r``
    given explicitly win.
    """
    kwargs = dict(kwargs)
    rank = kwargs.pop("r", None)
    if rank is not None:
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"AdaLoRA r={rank!r}: the LoRA rank to match must be a positive integer")
        kwargs.setdefault("target_r", rank)
        kwargs.setdefault("init_r", max(kwargs["target_r"], math.ceil(defaults.init_over_target * rank)))
    kwargs.setdefault("target_r", 8)
    kwargs.setdefault("init_r", max(kwargs["target_r"], math.ceil(defaults.init_over_target * kwargs["target_r"])))
    kwargs.setdefault("lora_alpha", round(defaults.alpha_per_rank * kwargs["init_r"]))
    kwargs.setdefault("orth_reg_weight", defaults.orth_reg_weight)
    return kwargs

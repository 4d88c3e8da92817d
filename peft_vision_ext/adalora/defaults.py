"""AdaLoRA's vision defaults, as data: what ``preset_config(model, "adalora", ...)``, ``recommend()`` and the quick
start fill in when the user leaves a field open. Measured in ``benchmarks/adalora_vision.py`` (docs/guides/adalora.md).

- Budget comparable to LoRA: ``r=...`` means "the final budget of a LoRA of rank r": ``target_r = r`` and
  ``init_r = 1.5 r`` (PEFT's own 12 -> 8 ratio); without ``r``, PEFT's 12 -> 8.
- Scale: AdaLoRA multiplies its update by ``lora_alpha / init_r``. With orthonormal factors (:mod:`.init`) the
  singular values ``E`` carry the whole update, one number per rank, so under Adam the update grows ~``lr`` per
  step times that scale, where a LoRA's ``B`` grows in every entry; ``lora_alpha = ALPHA_PER_RANK x init_r`` lets
  the singular values move as fast as a LoRA update. Saved in ``adapter_config.json``: plain PEFT reloads it.
- Initialisation: orthonormal (:mod:`.init`).
- Orthogonal regulariser weight by the model's kind. ``AdaLoraCallback`` and this package's loops apply the
  regulariser with the config's ``orth_reg_weight``. CNNs keep PEFT's 0.5 (MobileNetV2 task: +0.88 points over 0,
  with a third of the spread over seeds). Transformers get 0: every weight tried cost accuracy on the ViT task
  (paired seeds: 0.5 -1.84, 0.1 -1.5, 0.02 -1.4). PEFT's term is the unsquared Frobenius norm, whose gradient keeps
  a constant size however close the factors are to orthonormal; under Adam it outweighs the small loss gradients
  of A and B on attention layers while E is small.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .schedule import check_budget

PEFT_ORTH_REG_WEIGHT = 0.5


@dataclass(frozen=True)
class VisionAdaLoraDefaults:
    init_over_target: float = 1.5
    alpha_per_rank: float = 32.0
    #: by the family's kind (presets.detect_family); kinds not listed keep PEFT's weight. Measured: module docstring
    orth_reg_weight: Mapping[str, float] = field(default_factory=lambda: MappingProxyType(
        {"cnn": PEFT_ORTH_REG_WEIGHT, "transformer": 0.0, "hybrid": 0.0}))

    def orth_reg_weight_for(self, kind: str | None) -> float:
        return self.orth_reg_weight.get(kind or "", PEFT_ORTH_REG_WEIGHT)


VISION_DEFAULTS = VisionAdaLoraDefaults()


def vision_adalora_kwargs(kwargs: dict[str, Any], kind: str | None = None,
                          defaults: VisionAdaLoraDefaults = VISION_DEFAULTS) -> dict[str, Any]:
    """``kwargs`` for ``AdaLoraConfig`` with the vision defaults filled in where the caller left them out.

    ``r`` (if given) is read as the LoRA rank whose final budget AdaLoRA should match; ``init_r``/``target_r``
    given explicitly win; ``init_r`` alone prunes to ``init_r / 1.5``. ``kind``: the model's kind ("cnn",
    "transformer", "hybrid"), for the regulariser weight.
    """
    kwargs = dict(kwargs)
    rank = kwargs.pop("r", None)
    if rank is not None:
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"AdaLoRA r={rank!r}: the LoRA rank to match must be a positive integer")
        kwargs.setdefault("target_r", rank)
        kwargs.setdefault("init_r", max(kwargs["target_r"], math.ceil(defaults.init_over_target * rank)))
    if "init_r" in kwargs and "target_r" not in kwargs:  # init_r alone: prune by the same ratio
        kwargs["target_r"] = max(1, math.floor(kwargs["init_r"] / defaults.init_over_target))
    kwargs.setdefault("target_r", 8)
    kwargs.setdefault("init_r", max(kwargs["target_r"], math.ceil(defaults.init_over_target * kwargs["target_r"])))

    check_budget(kwargs["init_r"], kwargs["target_r"])
    kwargs.setdefault("lora_alpha", round(defaults.alpha_per_rank * kwargs["init_r"]))
    kwargs.setdefault("orth_reg_weight", defaults.orth_reg_weight_for(kind))
    return kwargs

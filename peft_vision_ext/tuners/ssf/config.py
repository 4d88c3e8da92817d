"""``SSFConfig``: scaling and shifting features (Lian et al., NeurIPS 2022) as a PEFT method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..base import VisionMethodConfig

#: PEFT's name of the method (``peft_type`` in adapter_config.json is its upper case); parameters start with the prefix.
NAME = "ssf"
PREFIX = "ssf_"


@dataclass
class SSFConfig(VisionMethodConfig):
    """A learnable per-channel scale and shift after each targeted layer: ``y = layer(x) * scale + shift``.

    Targets: Linear, Conv1d/2d/3d (depthwise included), ConvTranspose2d, nn.MultiheadAttention (its output), norm
    layers (LayerNorm, BatchNorm, GroupNorm, RMSNorm; channels-first variants; between the norm and the activation of
    timm's norm + act layers), Embedding, and bitsandbytes 4/8-bit Linear layers. ``target_modules=None`` on a
    recognised vision model: transformers get every Linear, Conv2d and norm layer of the backbone (preset ``ssf``),
    CNNs and hybrids every norm and Linear layer (``norm+linear``); the task head is trained in full.

    Merging is exact for full-precision layers: the scale multiplies the layer's output channels and the shift enters
    its bias (one is created where the layer has none). ``init_weights=True`` (default) starts at scale 1, shift 0, so
    the adapted model computes what the base model does; ``False`` draws them as the SSF paper does (scale ~ N(1,
    0.02), shift ~ N(0, 0.02)).
    """

    method: ClassVar[str] = NAME
    init_weights: bool = field(default=True, metadata={
        "help": "True: scale 1, shift 0 (identity at the start); False: the paper's random start."})

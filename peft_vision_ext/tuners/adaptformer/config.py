"""``AdaptFormerConfig``: parallel bottleneck adapters beside MLP blocks (Chen et al., NeurIPS 2022) and beside
residual conv blocks (as Convpass / Conv-Adapter do), as a PEFT method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..base import VisionMethodConfig

NAME = "adaptformer"
PREFIX = "adaptformer_"


@dataclass
class AdaptFormerConfig(VisionMethodConfig):
    """Beside each targeted module ``M``: ``M(x) + scale * up(relu(down(x)))``, a bottleneck of ``bottleneck``
    channels whose up-projection starts at zero (the adapted model starts as the base model).

    Targets are whole modules: an MLP block (timm ``blocks.N.mlp``, transformers 5 ``layers.N.mlp``, torchvision
    ``encoder_layer_N.mlp``) or a residual conv block (ResNet ``BasicBlock`` / ``Bottleneck``, MobileNet / EfficientNet
    inverted residuals), where the adapter's projections are 1x1 convolutions strided like the block. Single Linear,
    Conv2d, norm and bitsandbytes layers can be targeted too. ``target_modules=None`` on a recognised vision model:
    every MLP block of the backbone (transformers, hybrids) or every residual conv block (CNNs).

    Not mergeable: the branch is non-linear (its cost at inference: two small projections per block).
    """

    method: ClassVar[str] = NAME
    bottleneck: int = field(default=8, metadata={"help": "Channels of the bottleneck (AdaptFormer's hidden size)."})
    scale: float = field(default=0.1, metadata={"help": "The branch's fixed scale s (AdaptFormer: 0.1)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout inside the bottleneck, in training."})
    init_weights: bool = field(default=True, metadata={
        "help": "True: the up-projection starts at zero (identity at the start); False: random (for tests)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bottleneck < 1:
            raise ValueError(f"AdaptFormerConfig(bottleneck={self.bottleneck}): the bottleneck needs at least one "
                             "channel.")

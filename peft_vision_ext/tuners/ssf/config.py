"""``SSFConfig``: scaling and shifting features (Lian et al., NeurIPS 2022) as a PEFT method."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.config import PeftConfig

from ..base import registered_peft_type

#: PEFT's name of the method (``peft_type`` in adapter_config.json is its upper case); parameters start with the prefix.
NAME = "ssf"
PREFIX = "ssf_"


@dataclass
class SSFConfig(PeftConfig):
    """A learnable per-channel scale and shift after each targeted layer: ``y = layer(x) * scale + shift``.

    Targets: Linear, Conv1d/2d/3d (depthwise included), ConvTranspose2d, nn.MultiheadAttention (its output), norm
    layers (LayerNorm, BatchNorm, GroupNorm, RMSNorm; channels-first variants), Embedding, and bitsandbytes 4/8-bit
    Linear layers. ``target_modules=None`` on a recognised vision model gives every Linear, Conv2d and norm layer of
    the backbone (preset ``ssf``), the task head trained in full.

    Merging is exact for full-precision layers: the scale multiplies the layer's output channels and the shift enters
    its bias (one is created where the layer has none). ``init_weights=True`` (default) starts at scale 1, shift 0, so
    the adapted model computes what the base model does; ``False`` draws them as the SSF paper does (scale ~ N(1,
    0.02), shift ~ N(0, 0.02)).
    """

    target_modules: list[str] | str | None = field(default=None, metadata={
        "help": "Module names (or a regex) after which features are scaled and shifted; None: the vision preset."})
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Module names to leave out."})
    modules_to_save: list[str] | None = field(default=None, metadata={
        "help": "Modules trained in full and saved with the adapter (the task head)."})
    init_weights: bool = field(default=True, metadata={
        "help": "True: scale 1, shift 0 (identity at the start); False: the paper's random start."})
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Only these layer indices."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "The layer list's name."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = registered_peft_type(NAME)
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)

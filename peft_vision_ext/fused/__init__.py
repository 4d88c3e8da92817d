"""LoRA on the query/key/value slices of fused projections (timm ``qkv``/``kv``, ``nn.MultiheadAttention``).

>>> config = peft_vision_ext.preset_config(model, "lora", r=8)    # 'attention': one LoRA on each whole qkv
>>> config = peft_vision_ext.use_fused_slices(config)             # the q and v slices instead, each its own LoRA
>>> config = peft_vision_ext.preset_config(model, "lora", r=8, fused="slices")  # the same, the preset's slices

Saved adapters are standard PEFT LoRA (rank r per slice, stacked, with a block-structured B): plain PEFT loads
them without the plugin and reproduces the outputs; ``fused_slices.json`` beside them lets the plugin rebuild the
same trainable layout.

Layer: features, beside adalora (neither imports the other). It may import the data (roles), the layer math and
the base modules; presets and everything above read it.
"""

from .factors import BlockFactor
from .layout import FusedLayout, fused_layout
from .slices import SIDECAR, ModulePlan, fused_plans, use_fused_slices

__all__ = ["SIDECAR", "BlockFactor", "FusedLayout", "ModulePlan", "fused_layout", "fused_plans", "use_fused_slices"]

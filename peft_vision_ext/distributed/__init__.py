"""Multi-process training of vision adapters: FSDP2 sharding, saving a sharded adapter.

``torchrun --nproc_per_node N train.py`` with::

    model = get_peft_model(vit, AdaLoraConfig(...))       # or LoRA, LoHa, LoKr, IA3; 4-bit bases too
    shard_model(model)                                    # fully_shard per block, then the root
    ...                                                   # train; AdaLoRA's update_and_allocate works sharded
    save_adapter(model, "out")                            # every process calls it, process 0 writes

AdaLoRA's rank allocation on sharded adapters is a PEFT hook (``adalora-sharded-allocation``): plain
``update_and_allocate`` and :class:`~peft_vision_ext.AdaLoraCallback` work unchanged.

Layer: features, beside data (neither imports the other). It may import card_facts, the data below it, the layer
math and the base modules; AdaLoRA (its callback saves sharded checkpoints) and everything above read it.
"""

from __future__ import annotations

from .fsdp import is_sharded, quantized_parameters, repeated_blocks, shard_model
from .save import gather_adapter_state_dict, save_adapter

__all__ = ["gather_adapter_state_dict", "is_sharded", "quantized_parameters", "repeated_blocks", "save_adapter",
           "shard_model"]

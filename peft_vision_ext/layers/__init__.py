"""Layer math: what the plugin reads and does at the level of single layers and tensors, knowing nothing of model
families, presets or PEFT methods: the layer kinds the compatibility matrix has rows for (:mod:`.kinds`), the one
read-only forward that tells which layers a model really calls (:mod:`.probe`), bitsandbytes' CPU weight layout
(:mod:`.cpu_packing`), DTensor shards (:mod:`.shards`) and BatchNorm statistics (:mod:`.batchnorm`).

Layer: below the data (families, matrix) and everything above; it may import only the base modules.
"""

"""The compatibility matrix as data: the methods it has rows for (:mod:`.rows`, the one method table), the outcomes
measured on each PEFT release (:mod:`.grid`, ``grid.json``, read on first use) and the verdicts read from both, with
their rendering into the docs (:mod:`.verdicts`).

Layer: data, below the features (presets leave out what the matrix refuses) and the analysis that enforces it
(:mod:`peft_vision_ext.compat`). It may import the layer math and the base modules only.
"""

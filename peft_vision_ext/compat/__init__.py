"""The compatibility matrix's analysis side: the dry run (:func:`check`), the enforcement at PEFT's entry points,
method recommendations, and the verification harness that measures the grid. The matrix itself is data one layer
down (:mod:`peft_vision_ext.matrix`); ``compat.matrix``, ``compat.rows``, ``compat.kinds`` and ``compat.probe``
re-export what moved there.

Layer: analysis, beside :mod:`peft_vision_ext.hub` (neither imports the other). It may import the features
(presets, quantization, fused, adalora), the data and everything below; the PEFT hooks call into it."""

from __future__ import annotations

from ..layers.kinds import LayerKind
from ..matrix.verdicts import Operation, Status, all_entries, matrix_markdown
from .check import CompatReport, ModuleCheck, allow_unsupported, check
from .recommend import Recommendation, recommend

__all__ = ["CompatReport", "ModuleCheck", "allow_unsupported", "check", "LayerKind", "MATRIX", "Operation",
           "Status", "matrix_markdown", "Recommendation", "recommend"]


def __getattr__(name: str) -> object:
    if name == "MATRIX":  # data built on first use (the measured grid is not read at import): no module is loaded
        return all_entries()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The compatibility matrix (data), its checks (dry run and enforcement) and method recommendations."""

from __future__ import annotations

from .check import CompatReport, ModuleCheck, allow_unsupported, check
from .kinds import LayerKind
from .matrix import MATRIX, Operation, Status, matrix_markdown
from .recommend import Recommendation, recommend

__all__ = ["CompatReport", "ModuleCheck", "allow_unsupported", "check", "LayerKind", "MATRIX", "Operation",
           "Status", "matrix_markdown", "Recommendation", "recommend"]

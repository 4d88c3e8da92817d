"""Moved to :mod:`peft_vision_ext.matrix.verdicts` (data, below the presets that read it); re-exported here.

``MATRIX`` (every entry) is built on first use: :func:`all_entries`."""

from ..matrix.verdicts import (
    ADVICE,
    BNB_KINDS,
    CONV_KINDS,
    CURATED_MATRIX,
    DOCS_PAGE,
    KINDS,
    LINEAR_KINDS,
    METHOD_NAMES,
    METHODS,
    OK,
    SYMBOLS,
    Advice,
    Condition,
    Entry,
    K,
    Operation,
    Status,
    Verdict,
    all_entries,
    config_class,
    config_rows,
    curated,
    docs_markdown,
    entry,
    kinds_supporting,
    matrix_markdown,
    measured_rows,
    peft_method,
    title,
)

__all__ = [
    "ADVICE", "Advice", "BNB_KINDS", "CONV_KINDS", "CURATED_MATRIX", "Condition", "DOCS_PAGE", "Entry", "K",
    "KINDS", "LINEAR_KINDS", "METHODS", "METHOD_NAMES", "OK", "Operation", "SYMBOLS", "Status", "Verdict",
    "all_entries", "config_class", "config_rows", "curated", "docs_markdown", "entry", "kinds_supporting",
    "matrix_markdown", "measured_rows", "peft_method", "title",
]

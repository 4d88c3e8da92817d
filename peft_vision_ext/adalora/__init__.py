"""AdaLoRA on convolutions (every supported PEFT version) and the Trainer callback that allocates ranks."""

from __future__ import annotations

from typing import Any

from .layer import AdaLoraConv2d
from .regularization import orthogonal_regularization

__all__ = ["AdaLoraConv2d", "AdaLoraCallback", "orthogonal_regularization"]


def __getattr__(name: str) -> Any:
    if name == "AdaLoraCallback":  # imports transformers' Trainer machinery: only when asked for
        from .callback import AdaLoraCallback

        return AdaLoraCallback
    raise AttributeError(name)

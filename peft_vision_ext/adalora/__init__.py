"""AdaLoRA on convolutions (every supported PEFT version) and the Trainer callback that allocates ranks."""

from .layer import AdaLoraConv2d

__all__ = ["AdaLoraConv2d"]

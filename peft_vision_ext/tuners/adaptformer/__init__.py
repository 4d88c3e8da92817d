"""AdaptFormer: parallel bottleneck adapters beside MLP blocks and residual conv blocks."""

from .config import NAME, PREFIX, AdaptFormerConfig
from .layer import AdaptFormerLayer
from .model import AdaptFormerModel

__all__ = ["NAME", "PREFIX", "AdaptFormerConfig", "AdaptFormerLayer", "AdaptFormerModel"]

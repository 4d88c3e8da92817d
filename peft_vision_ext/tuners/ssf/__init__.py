"""SSF (scaling and shifting features): a per-channel scale and shift after chosen layers, mergeable exactly."""

from .config import NAME, PREFIX, SSFConfig
from .layer import SSFLayer
from .model import SSFModel

__all__ = ["NAME", "PREFIX", "SSFConfig", "SSFLayer", "SSFModel"]

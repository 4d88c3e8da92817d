"""Hub round trip: model cards and base-model metadata written with every saved vision adapter, and
:func:`load_adapter`, which rebuilds the base model from that metadata and applies the adapter."""

from .describe import TASKS, CardInfo, card_info, describe
from .load import load_adapter, rebuild_base

__all__ = ["TASKS", "CardInfo", "card_info", "describe", "load_adapter", "rebuild_base"]

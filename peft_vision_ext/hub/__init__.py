"""Hub round trip: model cards and base-model metadata written with every saved vision adapter, and
:func:`load_adapter`, which rebuilds the base model from that metadata and applies the adapter.

Layer: sharing, above the features (it rebuilds quantized, detection and fused-slice models). It may import every
layer below it; nothing below imports it (what lower layers need of a card lives in :mod:`peft_vision_ext.card_facts`).
"""

from ..card_facts import TASKS, CardInfo, card_info, describe
from .load import load_adapter, rebuild_base

__all__ = ["TASKS", "CardInfo", "card_info", "describe", "load_adapter", "rebuild_base"]

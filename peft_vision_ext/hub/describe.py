"""Moved to :mod:`peft_vision_ext.card_facts` (the layer below, which the features read); re-exported here."""

from ..card_facts import PRESET_ATTRIBUTE, TASKS, CardInfo, card_info, describe, record_preset

__all__ = ["PRESET_ATTRIBUTE", "TASKS", "CardInfo", "card_info", "describe", "record_preset"]

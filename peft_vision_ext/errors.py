"""Exceptions raised by peft-vision-ext. All are ValueErrors, so code catching PEFT's errors keeps working."""

from __future__ import annotations


class PresetError(ValueError):
    """A preset name that does not exist, or one that selects nothing on this model."""


class UnknownPresetError(PresetError):
    pass


class EmptyPresetError(PresetError):
    pass


class NotAVisionModelError(PresetError):
    """No family could be detected and structure shows nothing adaptable."""

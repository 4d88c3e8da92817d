"""Exceptions raised by peft-vision-ext. All are ValueErrors, so code catching PEFT's errors keeps working."""

from __future__ import annotations


def name_list(names: list[str], shown: int = 3) -> str:
    """``"a, b, c and 4 more"``: the first few module or tensor names of a long list, for messages."""
    rest = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {rest} more" if rest > 0 else "")


class PresetError(ValueError):
    """A preset name that does not exist, or one that selects nothing on this model."""


class UnknownPresetError(PresetError):
    """A preset name that is not in :data:`~peft_vision_ext.PRESETS` (the message lists the names that exist)."""


class EmptyPresetError(PresetError):
    """A preset that selects no layer on this model: the message names the parts and roles the model has and the
    presets that would select something."""


class NotAVisionModelError(PresetError):
    """No family could be detected and structure shows nothing adaptable."""


class UnsupportedCombinationError(ValueError):
    """A PEFT method refused on some layers by the compatibility matrix, before the model was touched.

    ``refusals`` maps (layer kind, reason, what to use instead) to the module paths concerned.
    """

    def __init__(self, message: str, method: str, operation: str, refusals: dict[tuple[str, str, str], list[str]]):
        super().__init__(message)
        self.method = method
        self.operation = operation
        self.refusals = refusals


class QuantizationError(ValueError):
    """quantize() / bnb_config() refused its input; the model was not changed."""


class AdapterLoadError(ValueError):
    """load_adapter() cannot rebuild the adapter's base model (what is missing and how to supply it is said)."""


class BaseModelMismatchError(AdapterLoadError):
    """The base model load_adapter got is not the one the adapter was trained on (its outputs would differ).

    ``differing`` lists the base tensors whose fingerprints differ, are missing or are unexpected.
    """

    def __init__(self, message: str, differing: list[str]):
        super().__init__(message)
        self.differing = differing


class PresetRefusedError(UnsupportedCombinationError, EmptyPresetError):
    """A preset selects layers on this model, but the compatibility matrix refuses every one of them for the method
    (LoHa on a 4-bit ViT). Both an :class:`UnsupportedCombinationError` (with the matrix's reasons) and an
    :class:`EmptyPresetError`."""


class FusedSlicesError(ValueError):
    """LoRA on the slices of a fused projection (qkv, kv, nn.MultiheadAttention) cannot be set up as asked: the
    slices cannot be determined, or the config asks for something the slices layout does not support (DoRA, ...)."""

"""peft-vision-ext: vision add-ons for Hugging Face PEFT.

``import peft_vision_ext`` is the whole integration: it installs the plugin's hooks into PEFT (idempotent,
see :mod:`peft_vision_ext.peft_hooks`). Afterwards plain PEFT understands vision models, e.g.
``get_peft_model(vit, LoraConfig(r=16))`` resolves the model family's default target modules.
"""

from __future__ import annotations

# noise first: it installs its log filters before peft_hooks imports PEFT, which imports bitsandbytes.
from . import (  # noqa: F401
    distributed,  # noqa: F401  (pve.distributed.shard_model / save_adapter)
    noise,
    peft_hooks,
)
from .adalora import use_adalora_init
from .compat import LayerKind, allow_unsupported, check, matrix_markdown, recommend
from .errors import (
    AdapterLoadError,
    BaseModelMismatchError,
    EmptyPresetError,
    FusedSlicesError,
    NotAVisionModelError,
    PresetError,
    QuantizationError,
    UnknownPresetError,
    UnsupportedCombinationError,
)
from .fused import use_fused_slices
from .hub import describe, load_adapter
from .presets import (
    PRESETS,
    VisionFamily,
    detect_family,
    list_presets,
    preset_config,
    register_family,
    resolve_targets,
)
from .quantization import bnb_config, get_quantized_peft_model, merge_and_unload, quantize, storage_bytes

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name == "AdaLoraCallback":  # lazy: importing it loads transformers' Trainer callbacks
        from .adalora.callback import AdaLoraCallback

        return AdaLoraCallback
    raise AttributeError(f"module 'peft_vision_ext' has no attribute {name!r}")

__all__ = [
    "__version__", "register", "AdaLoraCallback",
    "PRESETS", "VisionFamily", "detect_family", "list_presets", "preset_config",
    "register_family", "resolve_targets", "PresetError", "UnknownPresetError", "EmptyPresetError",
    "NotAVisionModelError", "UnsupportedCombinationError", "check", "recommend", "allow_unsupported",
    "matrix_markdown", "LayerKind", "quantize", "get_quantized_peft_model", "bnb_config", "merge_and_unload",
    "storage_bytes",
    "QuantizationError", "describe", "load_adapter", "AdapterLoadError", "BaseModelMismatchError",
    "use_fused_slices", "FusedSlicesError", "use_adalora_init",
]


def register() -> list[str]:
    """Register every add-on with PEFT (already done on import; calling it again changes nothing)."""
    return peft_hooks.install()


register()

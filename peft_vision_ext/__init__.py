"""peft-vision-ext: vision add-ons for Hugging Face PEFT.

``import peft_vision_ext`` is the whole integration: it installs the plugin's hooks into PEFT (idempotent,
see :mod:`peft_vision_ext.peft_hooks`). Afterwards plain PEFT understands vision models, e.g.
``get_peft_model(vit, LoraConfig(r=16))`` resolves the model family's default target modules.

The package is layered; a module imports only from its own layer's ``:``-joined siblings and from the layers below
(``[tool.importlinter]`` in pyproject.toml states it, ``make lint`` checks it), top to bottom:

==========================  ============================================================================
public face                 this module, ``__main__``, ``cli``, ``train`` (the quick-start job), ``envinfo``
PEFT integration            ``peft_hooks``: the one list of patches (:data:`~peft_vision_ext.peft_hooks.HOOKS`)
sharing and analysis        ``hub`` (cards, ``load_adapter``) | ``compat`` (``check``, enforcement, verification)
features                    ``detection`` | ``quantization``; ``presets`` (resolution); ``adalora`` | ``fused`` |
                            ``tuners`` (the plugin's own PEFT methods: SSF, AdaptFormer); ``distributed`` | ``data``
data                        ``card_facts``; ``families`` (the family registry) | ``matrix`` (methods, grid, verdicts)
layer math                  ``layers``: layer kinds, the forward probe, bitsandbytes' CPU layout, DTensor shards
base facts                  ``errors``, ``versions``, ``targets``, ``module_refs``, ``fingerprints``,
                            ``initial_factors``, ``legacy_names``, ``noise``, ``routing``, ``models``, ``patching``
==========================  ============================================================================
"""

from __future__ import annotations

# noise first: it installs its log filters before anything below imports PEFT, which imports bitsandbytes.
from . import noise  # noqa: F401

# isort: split
from . import distributed, peft_hooks  # noqa: F401  (pve.distributed.shard_model / save_adapter)
from .adalora import use_adalora_init
from .adalora.callback import adalora_callback_class
from .card_facts import describe
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
from .families import VisionFamily, detect_family, register_family
from .fused import use_fused_slices
from .hub import load_adapter
from .presets import PRESETS, list_presets, preset_config, resolve_targets
from .quantization import bnb_config, get_quantized_peft_model, merge_and_unload, quantize, storage_bytes
from .tuners import AdaptFormerConfig, SSFConfig
from .versions import __version__

__all__ = [
    "__version__", "register", "AdaLoraCallback",
    "PRESETS", "VisionFamily", "detect_family", "list_presets", "preset_config",
    "register_family", "resolve_targets", "PresetError", "UnknownPresetError", "EmptyPresetError",
    "NotAVisionModelError", "UnsupportedCombinationError", "check", "recommend", "allow_unsupported",
    "matrix_markdown", "LayerKind", "quantize", "get_quantized_peft_model", "bnb_config", "merge_and_unload",
    "storage_bytes",
    "QuantizationError", "describe", "load_adapter", "AdapterLoadError", "BaseModelMismatchError",
    "use_fused_slices", "FusedSlicesError", "use_adalora_init", "SSFConfig", "AdaptFormerConfig",
]


def __getattr__(name: str) -> type:
    if name == "AdaLoraCallback":  # needs transformers' TrainerCallback: built on first use (adalora/callback.py)
        return adalora_callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register() -> list[str]:
    """Register every add-on with PEFT (already done on import; calling it again changes nothing)."""
    return peft_hooks.install()


register()

"""The PEFT integration, the top layer of the library: the one list of every patch of PEFT (and bitsandbytes).

Every hook below is listed in :data:`HOOKS` with the PEFT versions it applies to and why it exists.
:func:`install` is idempotent: importing ``peft_vision_ext`` twice, or calling ``install()`` again, changes
nothing. Other modules never monkeypatch PEFT; they add a hook here. New hooks get a module of their own in this
package (or, for a patch that serves one feature only, a function next to that feature, as
:mod:`peft_vision_ext.quantization.bnb_patches`) and an entry in :data:`HOOKS`. Every layer below may be imported
here; nothing below imports this package (the marks and originals hooks share are in :mod:`peft_vision_ext.patching`).

Hooks never change PEFT's behaviour for models and configs the plugin has nothing to add to: each one hands
the call straight to PEFT unless it has something to add (a vision default preset, transformers-4 names in an
adapter, a conv layer PEFT lacks or gets wrong, a missed AdaLoRA allocation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from packaging.version import Version

from ..adalora.allocator import adalora_budget, load_rank_allocator_state, rank_allocator_state, set_adalora_total_step
from ..patching import ORIGINALS
from ..quantization.bnb_patches import install_buffered_forward, install_cpu_packing, patch_bitsandbytes
from ..versions import peft_version
from .adalora_conv import _install_adalora_conv
from .adalora_sharded import _install_adalora_sharded_allocation
from .adalora_trainer import _install_adalora_trainer_warning, warn_if_trainer_skips_allocation
from .conv_attributes import _install_conv_attributes
from .default_targets import _install_default_targets, fill_vision_defaults
from .fsdp1_state_keys import _install_fsdp1_adapter_keys
from .fused_slices import _install_fused_slices
from .heads_suffix import _install_modules_to_save_containers
from .heads_to_save import _install_tied_weights_without_embeddings
from .keyword_heads import _install_modules_to_save_keyword_calls
from .legacy_adapters import _install_legacy_state_dict_translation, translate_legacy_targets
from .matrix_guards import _install_matrix_merge
from .mha_restore import _install_mha_exact_restore
from .model_card import _install_vision_model_card
from .rewriting_inits import _install_rewriting_inits
from .sharded_save import _install_sharded_save
from .weight_routing import _install_weight_routing

__all__ = [
    "HOOKS",
    "MIN_PEFT",
    "ORIGINALS",
    "Hook",
    "active_hooks",
    "adalora_budget",
    "fill_vision_defaults",
    "install",
    "load_rank_allocator_state",
    "patch_bitsandbytes",
    "rank_allocator_state",
    "set_adalora_total_step",
    "translate_legacy_targets",
    "warn_if_trainer_skips_allocation",
]

MIN_PEFT = Version("0.15")  # first release with register_peft_method


@dataclass(frozen=True)
class Hook:
    name: str
    why: str
    min_peft: Version
    max_peft: Version | None  # exclusive; None = every newer release
    install: Callable[[], None]

    def applies(self, version: Version) -> bool:
        return version >= self.min_peft and (self.max_peft is None or version < self.max_peft)


HOOKS: tuple[Hook, ...] = (
    Hook(  # first: inside vision-default-targets' inject_adapter wrapper, so it sees the completed config
        name="base-rewriting-init-save",
        why="PiSSA/OLoRA/CorDA/LoftQ rewrite the base weights: a plain save re-ran the init at every load (CorDA's "
            "reload raised) and load_adapter refused the original base; saved through PEFT's conversion to plain "
            "LoRA (initial adapter kept from injection), the card fingerprints the original weights; such a "
            "checkpoint loads back into the training adapter (Trainer resume) as its trained half",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_rewriting_inits,
    ),
    Hook(
        name="vision-default-targets",
        why="target_modules=None resolves a vision preset (PEFT has defaults for text model types only)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_default_targets,
    ),
    Hook(
        name="transformers4-adapters",
        why="adapters saved with transformers 4.x module names load on transformers 5 (names translated)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_legacy_state_dict_translation,
    ),
    Hook(
        name="adalora-conv2d",
        why="AdaLoRA on Conv2d with any groups (depthwise included), factored forward (PEFT: none < 0.20, no groups)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_adalora_conv,
    ),
    Hook(
        name="adalora-sharded-allocation",
        why="AdaLoRA's rank allocation works on FSDP2-sharded adapters (PEFT: .tolist() fails on DTensor), one "
            "all-reduce of the scores per masking step, the same mask on every process",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_adalora_sharded_allocation,
    ),
    Hook(
        name="adalora-trainer-warning",
        why="a Trainer training AdaLoRA without AdaLoraCallback warns that ranks are not being allocated",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_adalora_trainer_warning,
    ),
    Hook(
        name="matrix-guards",
        why="combinations the compatibility matrix refuses raise before PEFT's pre-injection step or any merge",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_matrix_merge,
    ),
    Hook(
        name="conv-wrapper-attributes",
        why="PEFT conv wrappers expose stride/padding/kernel_size... (transformers MobileNet reads them)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_conv_attributes,
    ),
    Hook(
        name="vision-model-card",
        why="saved vision adapters get a model card (base model, task, method, preset, metrics) and rebuild metadata",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_vision_model_card,
    ),
    Hook(
        name="direct-weight-routing",
        why="adapters act where a parent computes F.linear with the layer's weight (timm BEiT/EVA/SwinV2, tv Swin)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_weight_routing,
    ),
    Hook(
        name="bnb-cpu-packing",
        why="bitsandbytes 4-bit layers keep their layout at eval forwards on AVX512-BF16 CPUs (so they can train)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=install_cpu_packing,
    ),
    Hook(
        name="bnb-buffered-4bit-forward",
        why="frozen bitsandbytes 4-bit layers on CPU dequantize into one reused buffer, not a new tensor per call "
            "(training-step resident memory under glibc's default malloc)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=install_buffered_forward,
    ),
    Hook(
        name="fused-qkv-slices",
        why="LoRA on q/v slices of fused qkv: fused_slices.json saved and read beside the adapter (the stacked ranks "
            "and block factors themselves are set around PEFT's injection, in vision-default-targets)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_fused_slices,
    ),
    Hook(
        name="mha-exact-restore",
        why="LoRA on nn.MultiheadAttention merges and unmerges at every forward: the frozen base weights drifted by "
            "rounding each step (torchvision ViT, SigLIP pooling head, Mask2Former/OneFormer decoders)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_mha_exact_restore,
    ),
    Hook(
        name="modules-to-save-keyword-calls",
        why="PEFT 0.17's ModulesToSaveWrapper.forward requires a positional input: heads called with keywords only "
            "(ZoeDepth's relative and metric heads) crashed at the first forward",
        min_peft=MIN_PEFT,  # installs only where the wrapper's forward has a positional x
        max_peft=None,
        install=_install_modules_to_save_keyword_calls,
    ),
    Hook(
        name="modules-to-save-containers",
        why="PEFT matches modules_to_save by string suffix: head `class_embed` also hit the ModuleList "
            "`enc_out_class_embed` (LW-DETR/RF-DETR), which it cannot wrap: get_peft_model and reload crashed",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_modules_to_save_containers,
    ),
    Hook(
        name="tied-weights-without-embeddings",
        why="PEFT asks models with tied weights for their input embeddings: detection transformers tie their heads "
            "but have none, and get_peft_model crashed (Deformable DETR, DAB-DETR, RT-DETRv2, D-FINE, Grounding DINO)",
        min_peft=MIN_PEFT,  # installs only where PEFT has _get_module_names_tied_with_embedding
        max_peft=None,
        install=_install_tied_weights_without_embeddings,
    ),
    Hook(
        name="fsdp1-adapter-keys",
        why="PEFT's structural selection of adapter keys misses them in FSDP1 state dicts (module names carry "
            "_fsdp_wrapped_module.): saves under FSDP1 held no LoRA weights",
        min_peft=MIN_PEFT,  # installs only where PEFT selects by module names (_get_tuner_state_dict_key_prefixes)
        max_peft=None,
        install=_install_fsdp1_adapter_keys,
    ),
    Hook(  # after fused-qkv-slices: both wrap PeftModel.save_pretrained, this one outside
        name="sharded-save",
        why="save_pretrained on an FSDP-sharded model: the vision card reads the full state dict Trainer passes "
            "(reading the base's shards on one process hangs); without one, refused (PEFT would save shards)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_sharded_save,
    ),
)

_installed: list[str] = []


def install() -> list[str]:
    """Install every hook that applies to the installed PEFT. Idempotent. Returns the active hook names."""
    version = peft_version()
    if version < MIN_PEFT:
        raise ImportError(f"peft-vision-ext needs peft >= {MIN_PEFT} (register_peft_method); found {version}.")
    for hook in HOOKS:
        if hook.name not in _installed and hook.applies(version):
            hook.install()
            _installed.append(hook.name)
    return list(_installed)


def active_hooks() -> list[str]:
    return list(_installed)

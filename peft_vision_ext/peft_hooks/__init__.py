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

import warnings
from collections.abc import Callable
from dataclasses import dataclass

from packaging.version import Version

from ..adalora.allocator import adalora_budget, load_rank_allocator_state, rank_allocator_state, set_adalora_total_step
from ..patching import ORIGINALS, SKIPPED, SkippedHook, Wrapped
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
from .vision_methods import _install_vision_methods
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
    #: the third-party attributes it replaces or relies on: one missing (or with another signature) skips the hook
    wraps: tuple[Wrapped, ...] = ()
    #: the matrix cells (row, layer kinds; "*": every kind) that only work with it: refused while it is skipped
    refuses: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: checked against the newest supported PEFT release (0.22.0): still needed, and why
    audit: str = ""

    def applies(self, version: Version) -> bool:
        return version >= self.min_peft and (self.max_peft is None or version < self.max_peft)

    def problems(self) -> list[str]:
        """What the installed libraries lack of what this hook wraps (empty: it can be installed)."""
        return [problem for wrapped in self.wraps if (problem := wrapped.problem()) is not None]


HOOKS: tuple[Hook, ...] = (
    Hook(  # first: the methods exist before any other hook sees a config of theirs
        name="vision-peft-methods",
        why="the plugin's own methods (SSF, AdaptFormer) are PEFT methods: PeftType gains their names, which "
            "register_peft_method (PEFT's extension point) requires, then each is registered through it",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_vision_methods,
        wraps=(
            Wrapped("peft.utils.peft_types:PeftType"),
            Wrapped("peft.utils:register_peft_method", ("name", "config_cls", "model_cls", "prefix")),
            Wrapped("peft.mapping:PEFT_TYPE_TO_CONFIG_MAPPING"),
        ),
        refuses=(("ssf", ("*",)), ("adaptformer", ("*",))),
        audit="still needed on 0.22: register_peft_method still raises 'Unknown PEFT type' for a name PeftType "
              "lacks, and PeftType cannot be extended otherwise",
    ),
    Hook(  # first: inside vision-default-targets' inject_adapter wrapper, so it sees the completed config
        name="base-rewriting-init-save",
        why="PiSSA/OLoRA/CorDA/LoftQ rewrite the base weights: a plain save re-ran the init at every load (CorDA's "
            "reload raised) and load_adapter refused the original base; saved through PEFT's conversion to plain "
            "LoRA (initial adapter kept from injection), the card fingerprints the original weights; such a "
            "checkpoint loads back into the training adapter (Trainer resume) as its trained half",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_rewriting_inits,
        wraps=(
            Wrapped("peft.tuners.tuners_utils:BaseTuner.inject_adapter", ("model", "adapter_name")),
            Wrapped("peft:PeftModel.save_pretrained", ("save_directory",)),
            Wrapped("peft:PeftModel.load_adapter", ("model_id", "adapter_name")),
            Wrapped("peft.tuners.lora.model:LoraModel.subtract_mutated_init"),
        ),
        refuses=(("lora-pissa", ("*",)), ("lora-olora", ("*",)), ("lora-corda", ("*",)), ("lora-loftq", ("*",))),
        audit="still needed on 0.22: its subtract_mutated_init still returns only the converted lora_A/lora_B (the "
              "trained heads and DoRA magnitudes are dropped) and needs path_initial_model_for_weight_conversion from "
              "the user",
    ),
    Hook(
        name="vision-default-targets",
        why="target_modules=None resolves a vision preset (PEFT has defaults for text model types only)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_default_targets,
        wraps=(
            Wrapped("peft.tuners.tuners_utils:BaseTuner.inject_adapter", ("model", "adapter_name")),
            Wrapped("peft.tuners.tuners_utils:BaseTuner._prepare_adapter_config"),
            Wrapped("peft.tuners.tuners_utils:check_target_module_exists"),
        ),
        refuses=(("lora-slices", ("*",)),),
        audit="still needed on 0.22: PEFT's default target tables are keyed by transformers model_type, with no "
              "timm/torchvision entries",
    ),
    Hook(
        name="transformers4-adapters",
        why="adapters saved with transformers 4.x module names load on transformers 5 (names translated)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_legacy_state_dict_translation,
        wraps=(Wrapped("peft.peft_model:set_peft_model_state_dict", ("model", "peft_model_state_dict")),),
        audit="still needed on 0.22: transformers 5 renamed ViT-style modules, PEFT does not translate saved adapters",
    ),
    Hook(
        name="adalora-conv2d",
        why="AdaLoRA on Conv2d with any groups (depthwise included), factored forward (PEFT: none < 0.20, no groups)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_adalora_conv,
        wraps=(
            Wrapped("peft.tuners.adalora.model:AdaLoraModel._create_new_module",
                    ("lora_config", "adapter_name", "target")),
        ),
        refuses=(("adalora", ("conv2d", "conv2d-1x1", "conv2d-grouped", "conv2d-dilated")),),
        audit="still needed on 0.22: its AdaLoRA conv raises on groups > 1 (depthwise convs)",
    ),
    Hook(
        name="adalora-sharded-allocation",
        why="AdaLoRA's rank allocation works on FSDP2-sharded adapters (PEFT: .tolist() fails on DTensor), one "
            "all-reduce of the scores per masking step, the same mask on every process",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_adalora_sharded_allocation,
        wraps=(
            Wrapped("peft.tuners.adalora.layer:RankAllocator.update_ipt", ("model",)),
            Wrapped("peft.tuners.adalora.layer:RankAllocator.mask_to_budget", ("model",)),
            Wrapped("peft.tuners.adalora.layer:RankAllocator.mask_using_rank_pattern", ("model",)),
        ),
        audit="still needed on 0.22: mask_to_budget still calls .tolist() on the (sharded) scores",
    ),
    Hook(
        name="adalora-trainer-warning",
        why="a Trainer training AdaLoRA without AdaLoraCallback warns that ranks are not being allocated",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_adalora_trainer_warning,
        wraps=(Wrapped("peft:PeftModel.forward"),),
        audit="still needed on 0.22: Trainer never calls update_and_allocate",
    ),
    Hook(
        name="matrix-guards",
        why="combinations the compatibility matrix refuses raise before PEFT's pre-injection step or any merge",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_matrix_merge,
        wraps=(Wrapped("peft.tuners.tuners_utils:BaseTuner.merge_adapter"),),
        audit="still needed on 0.22: the grid measures crashes and wrong merges PEFT does not refuse",
    ),
    Hook(
        name="conv-wrapper-attributes",
        why="PEFT conv wrappers expose stride/padding/kernel_size... (transformers MobileNet reads them)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_conv_attributes,
        wraps=(Wrapped("peft.tuners.lora.layer:_ConvNd"),),
        audit="still needed on 0.22: its conv wrappers still do not expose stride/padding/kernel_size",
    ),
    Hook(
        name="vision-model-card",
        why="saved vision adapters get a model card (base model, task, method, preset, metrics) and rebuild metadata",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_vision_model_card,
        wraps=(Wrapped("peft:PeftModel.create_or_update_model_card", ("output_dir",)),),
        audit="still needed on 0.22: its card knows nothing of timm/torchvision bases",
    ),
    Hook(
        name="direct-weight-routing",
        why="adapters act where a parent computes F.linear with the layer's weight (timm BEiT/EVA/SwinV2, tv Swin)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_weight_routing,
        wraps=(Wrapped("peft.tuners.tuners_utils:BaseTuner.inject_adapter", ("model", "adapter_name")),),
        audit="still needed on 0.22: timm/torchvision attention still computes F.linear with the layer's weight",
    ),
    Hook(
        name="bnb-cpu-packing",
        why="bitsandbytes 4-bit layers keep their layout at eval forwards on AVX512-BF16 CPUs (so they can train)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=install_cpu_packing,
        wraps=(Wrapped("bitsandbytes.nn:Linear4bit.__init__", when_imported=True),),
        audit="patches bitsandbytes, not PEFT: independent of the PEFT release",
    ),
    Hook(
        name="bnb-buffered-4bit-forward",
        why="frozen bitsandbytes 4-bit layers on CPU dequantize into one reused buffer, not a new tensor per call "
            "(training-step resident memory under glibc's default malloc)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=install_buffered_forward,
        wraps=(Wrapped("bitsandbytes.nn:Linear4bit.forward", when_imported=True),),
        audit="patches bitsandbytes, not PEFT: independent of the PEFT release",
    ),
    Hook(
        name="fused-qkv-slices",
        why="LoRA on q/v slices of fused qkv: fused_slices.json saved and read beside the adapter (the stacked ranks "
            "and block factors themselves are set around PEFT's injection, in vision-default-targets)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_fused_slices,
        wraps=(
            Wrapped("peft:PeftModel.save_pretrained", ("save_directory",)),
            Wrapped("peft.config:PeftConfigMixin.from_pretrained"),
        ),
        refuses=(("lora-slices", ("*",)),),
        audit="still needed on 0.22: the slice layout is this plugin's",
    ),
    Hook(
        name="mha-exact-restore",
        why="LoRA on nn.MultiheadAttention merges and unmerges at every forward: the frozen base weights drifted by "
            "rounding each step (torchvision ViT, SigLIP pooling head, Mask2Former/OneFormer decoders)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_mha_exact_restore,
        wraps=(Wrapped("peft.tuners.lora.layer:MultiheadAttention.forward", ("query",)),),
        refuses=(("lora", ("mha",)), ("lora-slices", ("mha",))),
        audit="still needed on 0.22: its forward still merges and unmerges (W + dW - dW rounds the base); 0.22 merges "
              "out_proj in place, which the hook now copies",
    ),
    Hook(
        name="modules-to-save-keyword-calls",
        why="PEFT 0.17's ModulesToSaveWrapper.forward requires a positional input: heads called with keywords only "
            "(ZoeDepth's relative and metric heads) crashed at the first forward",
        min_peft=MIN_PEFT,  # installs only where the wrapper's forward has a positional x
        max_peft=None,
        install=_install_modules_to_save_keyword_calls,
        wraps=(Wrapped("peft.utils.other:ModulesToSaveWrapper.forward"),),
        audit="installs only where the wrapper's forward takes a positional x (0.17); 0.22's takes *args, **kwargs: "
              "not installed there",
    ),
    Hook(
        name="modules-to-save-containers",
        why="PEFT matches modules_to_save by string suffix: head `class_embed` also hit the ModuleList "
            "`enc_out_class_embed` (LW-DETR/RF-DETR), which it cannot wrap: get_peft_model and reload crashed. "
            "peft 0.22 matches whole path components (_is_valid_match): not needed there",
        min_peft=MIN_PEFT,
        max_peft=Version("0.22"),
        install=_install_modules_to_save_containers,
        wraps=(Wrapped("peft.utils.other:_set_trainable", ("model", "adapter_name", "module_names")),),
        audit="gated off from 0.22: _set_trainable matches whole path components there (_is_valid_match)",
    ),
    Hook(
        name="tied-weights-without-embeddings",
        why="PEFT asks models with tied weights for their input embeddings: detection transformers tie their heads "
            "but have none, and get_peft_model crashed (Deformable DETR, DAB-DETR, RT-DETRv2, D-FINE, Grounding DINO)",
        min_peft=MIN_PEFT,  # installs only where PEFT has _get_module_names_tied_with_embedding
        max_peft=None,
        install=_install_tied_weights_without_embeddings,
        audit="installs only where PEFT has _get_module_names_tied_with_embedding (0.22 has it, still asking tied "
              "models for input embeddings); kept on 0.22, where the suite passes with it; not measured without it",
    ),
    Hook(
        name="fsdp1-adapter-keys",
        why="PEFT's structural selection of adapter keys misses them in FSDP1 state dicts (module names carry "
            "_fsdp_wrapped_module.): saves under FSDP1 held no LoRA weights",
        min_peft=MIN_PEFT,  # installs only where PEFT selects by module names (_get_tuner_state_dict_key_prefixes)
        max_peft=None,
        install=_install_fsdp1_adapter_keys,
        audit="installs only where PEFT selects adapter keys by module names (_get_tuner_state_dict_key_prefixes, 0.22"
              " has it); kept on 0.22, where the FSDP1 save test passes with it; not measured without it",
    ),
    Hook(  # after fused-qkv-slices: both wrap PeftModel.save_pretrained, this one outside
        name="sharded-save",
        why="save_pretrained on an FSDP-sharded model: the vision card reads the full state dict Trainer passes "
            "(reading the base's shards on one process hangs); without one, refused (PEFT would save shards)",
        min_peft=MIN_PEFT,
        max_peft=None,
        install=_install_sharded_save,
        wraps=(Wrapped("peft:PeftModel.save_pretrained", ("save_directory",)),),
        audit="kept on 0.22 for the card (reading a sharded base's tensors on one process still hangs); 0.22's "
              "get_peft_model_state_dict gathers DTensors when every process calls it, so the refusal without a "
              "state dict may be relaxable there: not measured",
    ),
)

_installed: list[str] = []


def install() -> list[str]:
    """Install every hook that applies to the installed PEFT. Idempotent. Returns the active hook names.

    Fails soft: a hook whose wrapped attributes the installed PEFT lacks (a newer release renamed one) or whose
    installation raises is skipped with one warning naming it and the PEFT version, and recorded in
    :data:`peft_vision_ext.patching.SKIPPED`; the compatibility matrix then refuses the features it provided. Plain
    PEFT keeps working: nothing of a skipped hook is patched.
    """
    version = peft_version()
    if version < MIN_PEFT:
        raise ImportError(f"peft-vision-ext needs peft >= {MIN_PEFT} (register_peft_method); found {version}.")
    for hook in HOOKS:
        if hook.name in _installed or hook.name in SKIPPED or not hook.applies(version):
            continue
        problems = hook.problems()
        if not problems:
            try:
                hook.install()
            except Exception as error:  # noqa: BLE001 - a PEFT internal changed shape: skip the hook, keep PEFT
                problems = [f"installing it raised {type(error).__name__}: {error}"]
        if problems:
            _skip(hook, f"peft {version}: {'; '.join(problems)}")
            continue
        _installed.append(hook.name)
    return list(_installed)


def _skip(hook: Hook, reason: str) -> None:
    SKIPPED[hook.name] = SkippedHook(reason, hook.refuses)
    refused = "; ".join(f"{row} on {', '.join(kinds) if '*' not in kinds else 'every layer kind'}"
                        for row, kinds in hook.refuses)
    warnings.warn(f"peft-vision-ext: hook {hook.name!r} skipped ({reason}). It provides: {hook.why}. "
                  + (f"Refused until a peft-vision-ext release supports this PEFT: {refused}. " if refused else "")
                  + "Everything else works; plain PEFT is unchanged.", UserWarning, stacklevel=3)


def active_hooks() -> list[str]:
    return list(_installed)

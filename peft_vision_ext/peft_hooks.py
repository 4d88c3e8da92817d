"""The one place where peft-vision-ext touches PEFT internals.

Every hook below is listed in :data:`HOOKS` with the PEFT versions it applies to and why it exists.
:func:`install` is idempotent: importing ``peft_vision_ext`` twice, or calling ``install()`` again, changes
nothing. Other modules never monkeypatch PEFT; they add a hook here.

Hooks never change PEFT's behaviour for models and configs the plugin has nothing to add to: each one hands
the call straight to PEFT unless it has something to add (a vision default preset, transformers-4 names in an
adapter, a conv layer PEFT lacks or gets wrong, a missed AdaLoRA allocation).
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from packaging.version import Version

from .versions import peft_version

logger = logging.getLogger("peft_vision_ext")

MIN_PEFT = Version("0.15")  # first release with register_peft_method
_MARK = "__peft_vision_ext_hook__"
#: The PEFT callables each hook wrapped (hook name -> original), for tests that compare against upstream.
ORIGINALS: dict[str, Callable[..., Any]] = {}


@dataclass(frozen=True)
class Hook:
    name: str
    why: str
    min_peft: Version
    max_peft: Version | None  # exclusive; None = every newer release
    install: Callable[[], None]

    def applies(self, version: Version) -> bool:
        return version >= self.min_peft and (self.max_peft is None or version < self.max_peft)


# --------------------------------------------------------------------------------------------------
# Hook: vision default targets
# --------------------------------------------------------------------------------------------------
def _method_name(config: Any) -> str:
    peft_type = getattr(config, "peft_type", None)
    return str(getattr(peft_type, "value", peft_type) or "").lower()


def _upstream_has_default(tuner: Any, model: Any, config: Any) -> bool:
    """Would PEFT itself resolve ``target_modules=None`` for this model (its model_type tables)?"""
    probe = copy.copy(config)
    try:
        probe = tuner._prepare_adapter_config(probe, tuner.get_model_config(model))
    except ValueError:
        return False
    return getattr(probe, "target_modules", None) is not None


def fill_vision_defaults(tuner: Any, model: Any, adapter_name: str) -> None:
    """Give a vision model with ``target_modules=None`` its family's default preset, head in modules_to_save.

    Only fills fields the user left as ``None``; explicit values are never rewritten. Models that PEFT
    already knows (text models in its tables) and models with nothing adaptable are left to PEFT.
    """
    from .errors import NotAVisionModelError
    from .hub.describe import record_preset
    from .presets import SUPPORTED_METHODS, resolve_default

    config = tuner.peft_config[adapter_name]
    method = _method_name(config)
    if method not in SUPPORTED_METHODS or getattr(config, "target_modules", None) is not None:
        return
    if getattr(config, "target_parameters", None) or _upstream_has_default(tuner, model, config):
        return
    try:
        resolution = resolve_default(model, method)
    except NotAVisionModelError:
        return  # nothing we recognise: PEFT raises its own "Please specify target_modules"
    config.target_modules = set(resolution.target_modules)
    record_preset(config, resolution.preset)
    if method == "ia3" and getattr(config, "feedforward_modules", None) is None:
        config.feedforward_modules = set(resolution.feedforward_modules)
    if getattr(config, "modules_to_save", None) is None and resolution.modules_to_save:
        config.modules_to_save = list(resolution.modules_to_save)
    logger.info(
        "peft-vision-ext: target_modules=None -> preset %r of %s (%d modules); task head %s trained in full",
        resolution.preset, resolution.family, len(resolution.target_modules), resolution.modules_to_save or "none",
    )


def _install_default_targets() -> None:
    # Why: PEFT resolves target_modules=None only through its TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING
    # tables, keyed by config.model_type. timm and torchvision models have no model_type at all, transformers
    # vision types are absent, and the right names differ between transformers 4 and 5; so we resolve in
    # BaseTuner.inject_adapter, the single entry point of get_peft_model, inject_adapter_in_model and
    # PeftModel.add_adapter, before PEFT reads the config.
    from peft.tuners.tuners_utils import BaseTuner

    original = BaseTuner.inject_adapter
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def inject_adapter(self: Any, model: Any, adapter_name: str, *args: Any, **kwargs: Any) -> Any:
        from .compat.enforce import enforce_injection

        fill_vision_defaults(self, model, adapter_name)
        translate_legacy_targets(self, model, adapter_name)
        # The compatibility matrix: refuse before PEFT replaces the first module (see _install_matrix_merge).
        enforce_injection(model, self.peft_config[adapter_name])
        return original(self, model, adapter_name, *args, **kwargs)

    setattr(inject_adapter, _MARK, True)
    BaseTuner.inject_adapter = inject_adapter


def targeted_modules(model: Any, config: Any) -> list[tuple[str, Any]]:
    """(path, module) of every module ``config`` targets on ``model``, as PEFT's injection will match them.

    Modules inside PEFT's own wrappers (base_layer, lora_A, modules_to_save copies) are skipped, like PEFT does;
    an already-wrapped target is returned as its wrapper. ``all-linear`` is expanded with PEFT's own helper.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer, _maybe_include_all_linear_layers, check_target_module_exists

    if getattr(config, "target_modules", None) is None:
        return []
    try:
        config = _maybe_include_all_linear_layers(copy.copy(config), model)
    except ValueError:
        return []  # PEFT raises its own error for this config when it injects
    found, inside = [], []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside) or "modules_to_save" in name.split("."):
            continue
        if name and check_target_module_exists(config, name):
            found.append((name, module))
        if isinstance(module, BaseTunerLayer) or type(module).__name__ == "ModulesToSaveWrapper":
            inside.append(name + ".")
    return found


# --------------------------------------------------------------------------------------------------
# Hook: adapters saved with transformers 4.x module names, loaded on transformers 5.x
# --------------------------------------------------------------------------------------------------
def translate_legacy_targets(tuner: Any, model: Any, adapter_name: str) -> None:
    """Translate a transformers-4.x adapter config (target_modules, modules_to_save) to this 5.x model."""
    from peft.tuners.tuners_utils import check_target_module_exists

    from .legacy_names import translate_config

    translate_config(model, tuner.peft_config[adapter_name], check_target_module_exists)


def _install_legacy_state_dict_translation() -> None:
    # Why: PeftModel.load_adapter (used by from_pretrained) hands the saved weights to
    # set_peft_model_state_dict, whose keys name transformers-4.x module paths in adapters trained before
    # transformers 5 renamed ViT/DeiT/DINOv2/Swin/SegFormer modules; PEFT only converts MoE layers. We rename
    # those keys (from transformers' own conversion tables) before PEFT matches them. The inject_adapter
    # hook above translates the config the same way.
    import peft.peft_model as peft_model_module

    original = peft_model_module.set_peft_model_state_dict
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def set_peft_model_state_dict(model: Any, peft_model_state_dict: dict, *args: Any, **kwargs: Any) -> Any:
        from .legacy_names import translate_state_dict

        base = getattr(getattr(model, "base_model", None), "model", model)
        return original(model, translate_state_dict(base, peft_model_state_dict), *args, **kwargs)

    setattr(set_peft_model_state_dict, _MARK, True)
    peft_model_module.set_peft_model_state_dict = set_peft_model_state_dict


# --------------------------------------------------------------------------------------------------
# Hook: AdaLoRA on Conv2d (all groups) on every supported PEFT version
# --------------------------------------------------------------------------------------------------
def _install_adalora_conv() -> None:
    # Why: PEFT < 0.20 refuses Conv2d for AdaLoRA; PEFT >= 0.20's SVDConv2d ignores `groups` (depthwise convs
    # crash at the first forward) and runs a second full-size convolution. AdaLoraModel._create_new_module is
    # the per-tuner dispatch point; we route plain Conv2d to peft_vision_ext.adalora.AdaLoraConv2d (same
    # parameter names/shapes as upstream for groups == 1) and everything else to PEFT.
    from peft.tuners.adalora.model import AdaLoraModel
    from peft.tuners.tuners_utils import BaseTunerLayer
    from torch import nn

    original = AdaLoraModel._create_new_module
    if getattr(original, _MARK, False):
        return

    def _create_new_module(lora_config: Any, adapter_name: str, target: Any, **kwargs: Any) -> Any:
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if type(base) is nn.Conv2d:
            from .adalora.layer import AdaLoraConv2d

            kwargs.pop("device_map", None)
            return AdaLoraConv2d(target, adapter_name, config=lora_config, **kwargs)
        return original(lora_config, adapter_name, target, **kwargs)

    setattr(_create_new_module, _MARK, True)
    ORIGINALS["adalora-conv2d"] = original
    AdaLoraModel._create_new_module = staticmethod(_create_new_module)


# --------------------------------------------------------------------------------------------------
# Hook: warn when a Trainer trains an AdaLoRA model without AdaLoraCallback
# --------------------------------------------------------------------------------------------------
def _calling_trainer() -> Any:
    """The transformers Trainer on the call stack, if any (looked up once per AdaLoRA model)."""
    import sys

    frame = sys._getframe(2)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if candidate is not None and any(
            cls.__name__ == "Trainer" and cls.__module__.startswith("transformers") for cls in type(candidate).__mro__
        ):
            return candidate
        frame = frame.f_back
    return None


def warn_if_trainer_skips_allocation(tuner: Any) -> None:
    """Once per AdaLoRA model: warn when a Trainer trains it without AdaLoraCallback."""
    if not tuner.training or getattr(tuner, "_pve_trainer_checked", False):
        return
    tuner._pve_trainer_checked = True
    trainer = _calling_trainer()
    callbacks = getattr(getattr(trainer, "callback_handler", None), "callbacks", [])
    if trainer is not None and not any(type(c).__name__ == "AdaLoraCallback" for c in callbacks):
        import warnings

        warnings.warn(
            "A Trainer is training an AdaLoRA model without peft_vision_ext.AdaLoraCallback: ranks are not being "
            "allocated (AdaLoRA trains as a fixed-rank LoRA). Pass callbacks=[AdaLoraCallback()].",
            UserWarning,
            stacklevel=3,
        )


def _install_adalora_trainer_warning() -> None:
    # Why: nothing in Trainer calls AdaLoraModel.update_and_allocate, so AdaLoRA silently trains as a fixed-rank
    # LoRA. PeftModel.forward (which, without a task_type, calls the base model directly and skips
    # AdaLoraModel.forward) is the first place that sees the Trainer at work; the check runs once per model.
    from peft import PeftModel
    from peft.tuners.adalora.model import AdaLoraModel

    original = PeftModel.forward
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        tuner = getattr(self, "base_model", None)
        if isinstance(tuner, AdaLoraModel):
            warn_if_trainer_skips_allocation(tuner)
        return original(self, *args, **kwargs)

    setattr(forward, _MARK, True)
    PeftModel.forward = forward


# --------------------------------------------------------------------------------------------------
# AdaLoRA's RankAllocator state (no public API in PEFT: ipt, exp_avg_ipt, exp_avg_unc dicts keyed by
# parameter name, identical from 0.15 to 0.21). AdaLoraCallback saves/restores it with Trainer checkpoints.
# --------------------------------------------------------------------------------------------------
_ALLOCATOR_STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")


def rank_allocator_state(tuner: Any) -> dict[str, Any]:
    allocator = tuner.rankallocator
    state: dict[str, Any] = {
        key: {name: t.detach().cpu() for name, t in getattr(allocator, key).items()} for key in _ALLOCATOR_STATE
    }
    state["rank_pattern"] = tuner.peft_config[tuner.trainable_adapter_name].rank_pattern
    return state


def load_rank_allocator_state(tuner: Any, state: dict[str, Any]) -> None:
    allocator = tuner.rankallocator
    device = next(tuner.parameters()).device
    for key in _ALLOCATOR_STATE:
        setattr(allocator, key, {name: t.to(device) for name, t in state[key].items()})
    if state.get("rank_pattern"):
        tuner.peft_config[tuner.trainable_adapter_name].rank_pattern = state["rank_pattern"]


def set_adalora_total_step(tuner: Any, steps: int) -> None:
    """Make the config and the RankAllocator (which may keep its own copy) agree on ``total_step``."""
    tuner.peft_config[tuner.trainable_adapter_name].total_step = steps
    if hasattr(tuner.rankallocator, "set_total_step"):
        tuner.rankallocator.set_total_step(steps)


def adalora_budget(tuner: Any, step: int) -> int | None:
    """The rank budget AdaLoRA's schedule sets at ``step`` (None once the final pattern is fixed)."""
    config = tuner.peft_config[tuner.trainable_adapter_name]
    if step >= config.total_step - config.tfinal:
        return None
    budget, _ = tuner.rankallocator.budget_schedule(step)
    return int(budget)


# --------------------------------------------------------------------------------------------------
# Hook: PEFT's conv wrappers expose the wrapped conv's geometry (stride, padding, ...)
# --------------------------------------------------------------------------------------------------
_CONV_ATTRIBUTES = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                    "padding_mode")


def _conv_wrapper_classes() -> list[type]:
    import importlib

    classes = []
    for module_name, class_name in (("peft.tuners.lora.layer", "_ConvNd"), ("peft.tuners.loha.layer", "Conv2d"),
                                    ("peft.tuners.lokr.layer", "Conv2d"), ("peft.tuners.ia3.layer", "Conv2d"),
                                    ("peft.tuners.adalora.layer", "SVDConv2d"),
                                    ("peft_vision_ext.adalora.layer", "AdaLoraConv2d")):
        cls = getattr(importlib.import_module(module_name), class_name, None)
        if cls is not None:
            classes.append(cls)
    return classes


def _install_conv_attributes() -> None:
    # Why: transformers' TF-"same"-padding models (MobileNetV1/V2) read `conv.stride` / `conv.kernel_size` of the
    # module they are about to call; PEFT's conv wrappers do not expose them, so the first forward raises
    # AttributeError. Read-only properties forward these attributes to the wrapped conv (classes only gain the
    # ones they lack; nothing PEFT sets on its wrappers is shadowed).
    def forwarded(attribute: str) -> property:
        return property(lambda self: getattr(self.get_base_layer(), attribute))

    for cls in _conv_wrapper_classes():
        for attribute in _CONV_ATTRIBUTES:
            if not hasattr(cls, attribute):
                setattr(cls, attribute, forwarded(attribute))


# --------------------------------------------------------------------------------------------------
# Hook: the compatibility matrix at merge time (injection is checked in the inject_adapter hook above)
# --------------------------------------------------------------------------------------------------
def _tuner_classes() -> list[type]:
    from peft.tuners.tuners_utils import BaseTuner

    found, pending = [], [BaseTuner]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def _install_matrix_merge() -> None:
    # Why: several methods crash halfway through a merge into bitsandbytes or grouped-conv layers (leaving some
    # layers merged, some not) or silently merge wrong. Every merge path goes through BaseTuner.merge_adapter or a
    # tuner's _unload_and_optionally_merge(merge=True) (merge_and_unload); in 0.17 each tuner defines its own, in
    # 0.21 BaseTuner does and a few override, so every class defining one is wrapped. The check runs first.
    from .compat.enforce import enforce_injection, enforce_merge

    def argument(args: tuple, kwargs: dict, name: str, position: int | None, default: Any) -> Any:
        if name in kwargs:
            return kwargs[name]
        return args[position] if position is not None and len(args) > position else default

    def guard(original: Callable[..., Any], merge_position: int | None, names_position: int) -> Callable[..., Any]:
        @functools.wraps(original)
        def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
            if argument(args, kwargs, "merge", merge_position, True):
                enforce_merge(self, argument(args, kwargs, "adapter_names", names_position, None))
            return original(self, *args, **kwargs)

        setattr(guarded, _MARK, True)
        return guarded

    def checked_before_injection(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def _pre_injection_hook(self: Any, model: Any, config: Any, *args: Any, **kwargs: Any) -> Any:
            enforce_injection(model, config)
            return original(self, model, config, *args, **kwargs)

        setattr(_pre_injection_hook, _MARK, True)
        return _pre_injection_hook

    for cls in _tuner_classes():
        # VeRA (and other shared-weight tuners) inspect the targets in _pre_injection_hook, before inject_adapter:
        # the matrix has to answer first there too, so their refusals read like every other one.
        original = cls.__dict__.get("_pre_injection_hook")
        if original is not None and not getattr(original, _MARK, False):
            cls._pre_injection_hook = checked_before_injection(original)
        # merge_adapter(adapter_names, safe_merge); _unload_and_optionally_merge(merge, progressbar, safe_merge,
        # adapter_names) -- the same positions on every supported PEFT version.
        for name, merge_position, names_position in (("merge_adapter", None, 0),
                                                     ("_unload_and_optionally_merge", 0, 3)):
            original = cls.__dict__.get(name)
            if original is not None and not getattr(original, _MARK, False):
                setattr(cls, name, guard(original, merge_position, names_position))


# --------------------------------------------------------------------------------------------------
# Hook: vision model card + rebuild metadata
# --------------------------------------------------------------------------------------------------
def _install_vision_model_card() -> None:
    # Why: PEFT's card knows nothing about vision bases (timm and torchvision models have no name_or_path, so
    # not even base_model is written) and nothing records how to rebuild the base. create_or_update_model_card is
    # what PeftModel.save_pretrained (main process only), push_to_hub and Trainer.create_model_card call, so the
    # card and peft_vision_ext.json travel with every save and upload without any upload code of ours.
    from peft import PeftModel

    original = PeftModel.create_or_update_model_card
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def create_or_update_model_card(self: Any, output_dir: str) -> Any:
        from .hub.card import write_vision_card

        result = original(self, output_dir)
        write_vision_card(self, output_dir)
        return result

    setattr(create_or_update_model_card, _MARK, True)
    PeftModel.create_or_update_model_card = create_or_update_model_card


HOOKS: tuple[Hook, ...] = (
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

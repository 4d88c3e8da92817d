"""Refusals and warnings at PEFT's entry points (installed by :mod:`peft_vision_ext.peft_hooks`)."""

from __future__ import annotations

import logging
import threading
import warnings
import weakref
from typing import Any

from torch import nn

from ..errors import UnsupportedCombinationError, name_list
from ..layers.cpu_packing import keep_unpacked
from ..layers.kinds import CONTAINERS, LayerKind, base_layer, layer_kind
from ..matrix.verdicts import Operation
from ..routing import BIAS_MERGING_METHODS, ROUTED_ATTRIBUTE, routed_paths
from ..versions import peft_at_least, peft_version
from .check import (
    CompatReport,
    ModuleCheck,
    _logical_params,
    enforcing,
    inspect_targets,
    method_name,
    routed_merge_refusal,
    row_verdicts,
)

logger = logging.getLogger("peft_vision_ext")
#: The first PEFT release that matches modules_to_save by whole path components (peft.utils.other._is_valid_match).
WHOLE_NAME_MATCHING = "0.22"
_warned: set[str] = set()
_last = threading.local()


def _warn_once(text: str) -> None:
    if text not in _warned:
        _warned.add(text)
        warnings.warn(f"peft-vision-ext: {text}", UserWarning, stacklevel=4)


def _mark_quantized(model: nn.Module, kinds: set[LayerKind]) -> None:
    # PEFT chooses its bitsandbytes-aware layers only when the model says it is quantized (transformers sets these
    # flags; timm/torchvision models quantized by hand do not have them). Set only when a target needs it.
    for bits, flag in ((4, "is_loaded_in_4bit"), (8, "is_loaded_in_8bit")):
        if any(kind.bits == bits for kind in kinds) and not getattr(model, flag, False):
            try:
                setattr(model, flag, True)
            except AttributeError:  # a read-only property: the library that quantized it manages the flag
                continue
            logger.info("peft-vision-ext: marked %s as %s so PEFT uses its bitsandbytes layers",
                        type(model).__name__, flag)


def suffix_surprises(model: nn.Module, modules_to_save: list[str] | None) -> dict[str, list[str]]:
    """modules_to_save entry -> modules PEFT also wraps because it matches names by plain string suffix.

    Before peft 0.22, PEFT trains in full every module whose path ends with an entry: ``head`` also catches
    ``auxiliary_head`` and ``decode_head``, ``classifier`` also ``aux_classifier``. Whole-name matches (``x.head``) are
    what users mean, and what peft >= 0.22 matches (empty there).
    """
    surprises: dict[str, list[str]] = {}
    keys = list(modules_to_save or [])
    if peft_at_least(WHOLE_NAME_MATCHING):  # PEFT matches whole path components: no surprise is possible
        return surprises

    def meant(name: str) -> bool:  # a whole-name match of some entry (torchvision FCN lists classifier.4 and
        return any(name == k or name.endswith("." + k) for k in keys)  # aux_classifier.4: no surprise)

    def inside_meant(name: str) -> bool:  # part of a module trained in full anyway (the nested wrapper PEFT adds
        parts = name.split(".")  # there is dropped by the heads-to-save hook): FCOS's head.classification_head
        return any(meant(".".join(parts[:i])) for i in range(1, len(parts)))

    for key in keys:
        for name, module in model.named_modules():
            # containers are skipped (hook modules-to-save-containers): PEFT could not wrap them anyway
            if (name.endswith(key) and not meant(name) and not isinstance(module, CONTAINERS)
                    and not inside_meant(name)):
                surprises.setdefault(key, []).append(name)
    return surprises


def _warn_suffix_surprises(model: nn.Module, config: Any) -> None:
    saved = getattr(config, "modules_to_save", None)
    for key, names in suffix_surprises(model, list(saved) if saved else None).items():
        extra = sum(p.numel() for name in names for p in model.get_submodule(name).parameters())
        _warn_once(f"modules_to_save entry {key!r} also matches {name_list(names)} (PEFT matches names by string "
                   f"suffix): {extra:,} more parameters will be trained in full and saved. If that is not intended, "
                   "rename the module or list a longer, unambiguous path.")


def _refuse_quantized_heads(model: nn.Module, config: Any) -> None:
    """modules_to_save on a bitsandbytes layer (or a module holding one): PEFT trains a full-precision copy of each,
    which a packed integer weight cannot be; PEFT raised "only Tensors of floating point dtype can require
    gradients" after it had already replaced some targets. A head quantize() did not recognise is the usual cause (a
    timm model inside the user's own wrapper module)."""
    found: dict[str, list[str]] = {}
    for key in getattr(config, "modules_to_save", None) or []:
        for name, module in model.named_modules():
            if not name.endswith(key) or isinstance(module, CONTAINERS):
                continue
            quantized = [inner for inner, m in module.named_modules()
                         if layer_kind(m) in (LayerKind.BNB_4BIT, LayerKind.BNB_8BIT)]
            if quantized:
                found.setdefault(name, [f"{name}.{q}" if q else name for q in quantized])
    if not found:
        return
    names = sorted(found)
    layers = sorted({layer for inner in found.values() for layer in inner})
    reason = ("modules_to_save trains a full-precision copy of each module, and these hold bitsandbytes-quantized "
              "layers")
    listed = ", ".join(repr(layer) for layer in layers[:6]) + (", ..." if len(layers) > 6 else "")
    instead = (f"quantize the full-precision model keeping them: peft_vision_ext.quantize(model, skip=[{listed}]) "
               "(skip replaces the default list of kept layers: add any other layer to keep), or "
               "get_quantized_peft_model, which keeps modules_to_save by itself; for transformers models, list them "
               "in llm_int8_skip_modules (bnb_config() does so for the heads it recognises)")
    raise UnsupportedCombinationError(
        f"{method_name(config)}: modules_to_save {name_list(names)} cannot be trained in full: {reason} "
        f"({name_list(layers)}). Instead: {instead}.\nThe model was not modified.",
        method_name(config), Operation.TRAIN.value, {("bnb", reason, instead): names})


def enforce_injection(model: nn.Module, config: Any) -> None:
    """Before PEFT replaces any module: refuse what the matrix refuses (and targets the forward never calls), warn
    what it warns about. The targets whose parent computes ``F.linear`` with their weight itself are recorded on the
    config (``ROUTED_ATTRIBUTE``): the direct-weight-routing hook routes those calls through the wrappers once PEFT
    has injected them (:func:`peft_vision_ext.routing.route`).

    Runs from the tuner's pre-injection hook and again from inject_adapter (after the vision defaults are filled
    in); the second call is skipped when nothing changed in between.
    """
    targets = repr(getattr(config, "target_modules", None))
    last = getattr(_last, "checked", None)  # weak references: a new object may reuse a dead one's id
    if last is not None and last[0]() is model and last[1]() is config and last[2] == targets:
        config.__dict__[ROUTED_ATTRIBUTE] = list(last[3])
        return
    _warn_suffix_surprises(model, config)
    # bitsandbytes may have repacked 4-bit weights at an eval forward before the plugin saw the model: training
    # would fail on them (see layers/cpu_packing.py); from here on they stay unpacked.
    keep_unpacked(model)
    if enforcing():
        _refuse_quantized_heads(model, config)
    report = inspect_targets(model, config)  # also without enforcement: routing needs to know the parents
    if enforcing():
        error = report.error(Operation.TRAIN)
        if error is not None:
            raise error
        for text in report.advice + report.notes:
            _warn_once(text)
        merge_refused = report.refused(Operation.MERGE)
        if merge_refused:
            logger.info("peft-vision-ext: %d adapted modules cannot be merged later (%s)", len(merge_refused),
                        merge_refused[0].merge.reason)
    routed = [m.path for m in report.modules if m.routed]  # without enforcement: whatever the method
    config.__dict__[ROUTED_ATTRIBUTE] = routed  # for the direct-weight-routing hook, after PEFT has injected
    _mark_quantized(model, {m.kind for m in report.modules})
    _last.checked = (weakref.ref(model), weakref.ref(config), targets, tuple(routed)) if enforcing() else None


def _holds(module: nn.Module, adapter: str) -> bool:
    return any(adapter in (getattr(module, name, None) or {}) for name in getattr(module, "adapter_layer_names", ()))


def enforce_merge(tuner: Any, adapter_names: list[str] | None) -> None:
    """Before PEFT merges anything: refuse when a merged adapter sits on a layer kind its method cannot merge into."""
    if not enforcing():
        return

    keep_unpacked(tuner.model)  # merging reads 4-bit weights in bitsandbytes' standard layout
    names = adapter_names or list(getattr(tuner, "active_adapters", None) or [])
    routed = set(routed_paths(tuner.model))
    for adapter in names:
        config = tuner.peft_config.get(adapter)
        if config is None:
            continue
        method = method_name(config)
        modules = []
        for path, module in tuner.model.named_modules():
            if not hasattr(module, "adapter_layer_names") or not _holds(module, adapter):
                continue
            base = base_layer(module)
            kind = layer_kind(base)
            train, merge = row_verdicts(method, config, kind, base, path, peft_version())
            if path in routed and method in BIAS_MERGING_METHODS:
                merge = routed_merge_refusal(method, path.rpartition(".")[0] or "the model")
            modules.append(ModuleCheck(path, kind, train, merge, _logical_params(base)))
        report = CompatReport(method, str(peft_version()), modules, total_params=0)
        error = report.error(Operation.MERGE)
        if error is not None:
            raise error

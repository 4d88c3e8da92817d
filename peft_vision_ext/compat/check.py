"""``check(model, config)``: what the matrix says about every module a PEFT config would adapt, before any is.

The same report drives the refusals inside ``get_peft_model`` & co. (see :mod:`peft_vision_ext.peft_hooks`),
so a dry run and the real call can never disagree.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..card_facts import PRESET_ATTRIBUTE, is_vision_model
from ..errors import UnsupportedCombinationError, name_list
from ..families import detect_family
from ..fused.slices import fused_plans, prepare
from ..layers.kinds import QUANTIZED_KINDS, LayerKind, layer_kind
from ..layers.kinds import base_layer as _base_layer
from ..layers.probe import Observation, observe, takes_images
from ..matrix.verdicts import (
    ADVICE,
    KINDS,
    METHOD_NAMES,
    Entry,
    Operation,
    Status,
    Verdict,
    config_rows,
    entry,
    for_config,
    title,
)
from ..module_refs import list_held_modules
from ..patching import SKIPPED
from ..presets import PRESETS, complete_config, dropped
from ..routing import BIAS_MERGING_METHODS, ROUTABLE_METHODS, routable
from ..targets import method_name, targeted_modules
from ..versions import peft_version

_UNVERIFIED = Verdict(Status.UNVERIFIED, "not covered by the compatibility matrix: passed through to PEFT unverified")
_state = threading.local()


@contextlib.contextmanager
def allow_unsupported() -> Iterator[None]:
    """Turn refusals off inside the block (at your own risk: refused cells crash late or give wrong results)."""
    depth = getattr(_state, "bypass", 0)
    _state.bypass = depth + 1
    try:
        yield
    finally:
        _state.bypass = depth


def enforcing() -> bool:
    return getattr(_state, "bypass", 0) == 0


@dataclass(frozen=True)
class ModuleCheck:
    """One targeted module: its layer kind and the verdicts for training (and save/load) and merging."""
    path: str
    kind: LayerKind
    train: Verdict
    merge: Verdict
    base_params: int
    adapter_params: int | None = None  # None: not counted (refused, or a layer type we cannot stand in for)
    routed: bool = False  # its parent computes F.linear with its weight: the call is routed through the wrapper
    slices: tuple[str, ...] = ()  # LoRA on these slices of a fused q/k/v layer (peft_vision_ext.fused)


@dataclass
class CompatReport:
    method: str
    peft_version: str
    modules: list[ModuleCheck]
    total_params: int  # of the model (check() only; 0 in the reports the enforcement builds)
    modules_to_save: list[str] = field(default_factory=list)
    modules_to_save_params: int = 0
    advice: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: (kind, reason, instead) -> paths the preset selects but left out for this method (check() with a preset only)
    dropped: dict[tuple[str, str, str], list[str]] = field(default_factory=dict)
    #: AdaLoRA only: (init_r, target_r); ranks move between layers, the total ends at target_r per layer
    adalora_ranks: tuple[int, int] | None = None

    @property
    def adalora_final_params(self) -> int | None:
        """AdaLoRA's adapter parameters once pruned to ``target_r`` per layer on average (an even split; the
        allocation moves ranks between layers, so the real count differs by the layers' sizes)."""
        if self.adalora_ranks is None:
            return None
        init_r, target_r = self.adalora_ranks
        return round(self.adapter_params * target_r / max(1, init_r))

    def refused(self, operation: Operation = Operation.TRAIN) -> list[ModuleCheck]:
        return [m for m in self.modules if getattr(m, "merge" if operation is Operation.MERGE else "train").status
                is Status.REFUSED]

    @property
    def ok(self) -> bool:
        return not self.refused(Operation.TRAIN)

    @property
    def routed(self) -> list[str]:
        """Targets whose parent computes F.linear with their weight: routed through the wrapper after injection."""
        return [m.path for m in self.modules if m.routed and m.train.status is not Status.REFUSED]

    @property
    def adapter_params(self) -> int:
        return sum(m.adapter_params or 0 for m in self.modules)

    @property
    def trainable_params(self) -> int:
        return self.adapter_params + self.modules_to_save_params

    @property
    def trainable_share(self) -> float:
        return self.trainable_params / max(1, self.total_params + self.adapter_params)

    def error(self, operation: Operation = Operation.TRAIN) -> UnsupportedCombinationError | None:
        """The error a refused ``operation`` raises (None when nothing is refused)."""
        refused = self.refused(operation)
        if not refused:
            return None
        groups: dict[tuple[str, str, str], list[str]] = {}
        for module in refused:
            verdict = module.merge if operation is Operation.MERGE else module.train
            groups.setdefault((module.kind.value, verdict.reason, verdict.instead), []).append(module.path)
        name = title(self.method)
        verb = "merge into" if operation is Operation.MERGE else "adapt"
        lines = []
        for (kind, reason, instead), paths in groups.items():
            lines.append(f"{name} cannot {verb} {kind} layers [{LayerKind(kind).description}] ({name_list(paths)}): "
                         f"{reason}. Instead: {instead}.")
        lines.append("The model was not modified." if operation is Operation.TRAIN else
                     "Nothing was merged; the adapted model is unchanged.")
        return UnsupportedCombinationError("\n".join(lines), self.method, operation.value, groups)

    def render(self) -> str:
        """A plain-text table for the CLI: one row per module, totals, warnings."""
        header = f"{'module':<48} {'kind':<15} {'train':<24} {'merge':<24} {'adapter':>9} {'base':>10}"
        lines = [f"method {title(self.method)} on peft {self.peft_version}", header,
                 "-" * len(header)]
        for m in self.modules:
            adapter = "-" if m.adapter_params is None else f"{m.adapter_params:,}"
            lines.append(f"{m.path[-48:]:<48} {m.kind.value:<15} {m.train.status.value:<24} "
                         f"{m.merge.status.value:<24} {adapter:>9} {m.base_params:>10,}")
        lines.append("-" * len(header))
        for (kind, reason, instead), paths in self.dropped.items():
            lines.append(f"left out by the preset: {len(paths)} {kind} layers ({name_list(paths)}): {reason}. "
                         f"Instead: {instead}.")
        sliced = [m for m in self.modules if m.slices]
        for chosen in sorted({m.slices for m in sliced}):
            paths = [m.path for m in sliced if m.slices == chosen]
            lines.append(f"fused slices: {name_list(paths)} ({len(paths)}) get LoRA on their {', '.join(chosen)} "
                         "slices, rank r each (in adapter_config.json: the stacked rank on the whole layer)")
        if self.adalora_ranks is not None:
            init_r, target_r = self.adalora_ranks
            lines.append(f"AdaLoRA budget: rank {init_r} per layer at the start ({self.adapter_params:,} adapter "
                         f"parameters) -> {target_r} per layer on average at the end (~{self.adalora_final_params:,} "
                         f"at an even split; ranks move between layers): the final budget of a LoRA with r={target_r}")
        if self.routed:
            lines.append(f"routed: {name_list(self.routed)} ({len(self.routed)}): their parent computes F.linear with "
                         "their weight itself; the plugin routes that call through the adapter")
        lines.append(f"{len(self.modules)} modules; adapter parameters {self.adapter_params:,}; task head "
                     f"{self.modules_to_save or 'none'} ({self.modules_to_save_params:,} parameters trained in full); "
                     f"trainable {self.trainable_params:,} of {self.total_params + self.adapter_params:,} "
                     f"({100 * self.trainable_share:.2f} %)")
        # A module that cannot be trained is not reported a second time for merging.
        for operation in (Operation.TRAIN, Operation.MERGE) if self.ok else (Operation.TRAIN,):
            error = self.error(operation)
            if error is not None:
                lines += [f"REFUSED ({operation.value}):", str(error)]
        lines += [f"warning: {text}" for text in self.advice + self.notes]
        return "\n".join(lines)


def _logical_params(module: nn.Module) -> int:
    """Parameters of the layer as a matrix, not as stored (packed 4-bit weights hold two values per byte)."""
    weight_count = (module.in_features * module.out_features) if layer_kind(module).value.startswith("bnb") else None
    return sum(weight_count if (weight_count is not None and name == "weight") else p.numel()
               for name, p in module.named_parameters(recurse=True))


def _rank_for(config: Any, path: str) -> int:
    for key, rank in (getattr(config, "rank_pattern", None) or {}).items():
        if re.search(rf"(^|\.){key}$", path):
            return rank
    return getattr(config, "init_r", None) or getattr(config, "r", 8)


def _family_kind(model: nn.Module) -> str | None:
    try:
        detection = detect_family(model)
    except Exception:  # noqa: BLE001 - advice is best effort; the checks below do not depend on it
        return None
    return None if detection is None else detection.kind


def _advice(method: str, model: nn.Module, kinds: set[LayerKind]) -> list[str]:
    quantized = bool(kinds & set(QUANTIZED_KINDS))
    wanted = any(a.when == "transformer" and method in a.methods for a in ADVICE)
    family_kind = _family_kind(model) if wanted else None  # detection walks the model: only when it matters
    conditions = {"always": True, "quantized": quantized, "transformer": family_kind == "transformer"}
    return [a.text for a in ADVICE if method in a.methods and conditions[a.when]]


def _verdicts(item: Entry | None, module: nn.Module, config: Any, path: str) -> tuple[Verdict, Verdict]:
    if item is None:
        return _UNVERIFIED, _UNVERIFIED
    if item.condition is not None and not item.condition.holds(module, _rank_for(config, path)):
        return item.condition_verdict, item.condition_verdict
    return for_config(item, config)


def row_verdicts(method: str, config: Any, kind: LayerKind, module: nn.Module, path: str,
                 version: Any) -> tuple[Verdict, Verdict]:
    """(train, merge) for one module: the method's row and every LoRA variant the config turns on; a refusal by any
    of them wins, then an unverified row, else the method's own verdicts."""
    verdicts = [_verdicts(entry(row, kind, version), module, config, path) for row in config_rows(method, config)]

    def worst(pick: int) -> Verdict:
        for status in (Status.REFUSED, Status.UNVERIFIED):
            found = next((v[pick] for v in verdicts if v[pick].status is status), None)
            if found is not None:
                return found
        return verdicts[0][pick]

    return worst(0), worst(1)


def _held_in_list(owner: str) -> Verdict:
    return Verdict(
        Status.REFUSED,
        f"the forward calls these modules through a plain Python list ({owner}), which PEFT's replacement of the "
        "module does not reach: the adapter would never be called",
        "target other modules (`peft-vision check MODEL --preset NAME` lists a preset's modules), or train the "
        "block holding the list in full (modules_to_save)")


def _never_called(parent: str) -> Verdict:
    return Verdict(
        Status.REFUSED,
        "the model's forward never calls these modules and no F.linear reads their weight "
        f"({parent or 'the model'} uses them some other way, or not at all), so an adapter there would never act",
        "target modules the forward calls (`peft-vision check MODEL --preset NAME` lists a preset's modules), "
        "e.g. the MLP (preset 'mlp')")


#: The hook that routes F.linear calls through the adapters (peft_hooks.weight_routing).
ROUTING_HOOK = "direct-weight-routing"


def _routing_skipped(parent: str, reason: str) -> Verdict:
    return Verdict(Status.REFUSED, f"{parent} computes F.linear(x, layer.weight, ...) instead of calling the layer, "
                   f"and the plugin's hook {ROUTING_HOOK!r} that routes that call through the adapter was skipped "
                   f"({reason}): the adapter would never act", "leave these layers out (preset 'mlp'), or a PEFT "
                   "release this peft-vision-ext supports")


def _not_routable(method: str, parent: str) -> Verdict:
    routable = ", ".join(METHOD_NAMES[m] for m in METHOD_NAMES if m in ROUTABLE_METHODS)
    return Verdict(Status.REFUSED, f"{parent} computes F.linear(x, layer.weight, its own bias) instead of calling the "
                   f"layer; the plugin routes that call through the adapter for {routable} only: {method}'s wrapper "
                   "also reads the layer's own weight or bias, so it would not compute the layer it merges into",
                   f"{routable} (LoRA without DoRA) on these layers; or leave them out (preset 'mlp')")


def routed_merge_refusal(method: str, parent: str) -> Verdict:
    """Merging a bias-writing method (SSF) into a layer whose parent passes its own bias to F.linear."""
    return Verdict(Status.REFUSED, f"{parent} computes F.linear(x, layer.weight, its own bias): {title(method)}'s "
                   "merge moves its shift into the layer's bias, which that call never reads (training, saving and "
                   "reloading are exact: the call is routed through the adapter)",
                   "keep the adapter unmerged, or leave these layers out (SSF's default preset, target_modules=None, "
                   "does)")


def inspect_targets(model: nn.Module, config: Any) -> CompatReport:
    """The report without parameter counts (what the enforcement hook needs): one forward with read-only hooks
    (:func:`~peft_vision_ext.compat.probe.observe`) tells which targets the model calls, which it reads through
    ``F.linear`` (``routed``) and which Linear layers see 4-D input."""
    method = method_name(config)
    version = peft_version()
    targets = [(path, _base_layer(module)) for path, module in targeted_modules(model, config)]
    notes = []
    observation = observe(model, [path for path, _ in targets]) if targets else Observation(False)
    if targets and not observation.ran and (takes_images(model) or is_vision_model(model)):  # else nothing to say
        notes.append(f"could not run {type(model).__name__} on an example input: whether its forward calls every "
                     "targeted module (and which Linear layers get 4-D input) was not checked")
    never_called = set(observation.never_called([path for path, _ in targets]))

    held = list_held_modules(model) if targets else {}
    if observation.training_only:
        notes.append(f"{name_list(list(observation.training_only))} run in training mode only (auxiliary heads): "
                     "their adapters act in training, not at evaluation")
    modules = []
    for path, module in targets:
        kind = layer_kind(module, observation.ndims.get(path))
        train, merge = row_verdicts(method, config, kind, module, path, version)
        routed = path in observation.weight_reads
        if id(module) in held:
            train = merge = _held_in_list(held[id(module)])
        elif path in never_called:
            train = merge = _never_called(path.rpartition(".")[0])
        elif routed and not routable(config):
            label = "DoRA" if getattr(config, "use_dora", False) else METHOD_NAMES.get(method, method)
            train = merge = _not_routable(label, observation.weight_reads[path])
        elif routed and ROUTING_HOOK in SKIPPED:
            train = merge = _routing_skipped(observation.weight_reads[path], SKIPPED[ROUTING_HOOK].reason)
        elif routed and method in BIAS_MERGING_METHODS and merge.status.allowed:
            merge = routed_merge_refusal(method, observation.weight_reads[path])
        modules.append(ModuleCheck(path, kind, train, merge, _logical_params(module), routed=routed))
    unverified = [m for m in modules if m.train.status is Status.UNVERIFIED]
    if modules and len(unverified) == len(modules) and all(entry(row, k, version) is None
                                                           for row in config_rows(method, config) for k in KINDS):
        notes.append(f"{title(method) or type(config).__name__} is not covered by the compatibility matrix on peft "
                     f"{version}: it is passed to PEFT unverified on vision layers (`peft-vision matrix --verify` "
                     "runs its cells on your installation)")
    elif unverified:
        kinds = {m.kind for m in unverified}
        by_path = dict(targets)
        types = sorted({type(by_path[m.path]).__name__ for m in unverified})
        reasons = sorted({m.train.reason for m in unverified if m.kind is not LayerKind.OTHER and m.train.reason
                          and m.train is not _UNVERIFIED})
        notes.append(f"{' + '.join(title(row) for row in config_rows(method, config))} on {', '.join(types)} "
                     f"({', '.join(sorted(k.value for k in kinds))}) is not covered by the compatibility matrix "
                     f"(passed to PEFT unverified){': ' + '; '.join(reasons) if reasons else ''}")
    return CompatReport(
        method=method, peft_version=str(version), modules=modules,
        total_params=0,  # counted by check() only: the refusal check on every injection does not need it
        advice=_advice(method, model, {m.kind for m in modules}), notes=notes,
    )


# --------------------------------------------------------------------------------------------------
# Parameter counts: each distinct layer shape gets a stand-in that PEFT adapts for real.
# --------------------------------------------------------------------------------------------------
def _stand_in(module: nn.Module, kind: LayerKind) -> nn.Module | None:
    """A fresh layer of the same shape (uninitialised memory; not on the meta device, where PEFT's moves would
    reset requires_grad flags)."""
    skip_init = torch.nn.utils.skip_init
    if kind in (LayerKind.LINEAR, LayerKind.LINEAR_4D, *QUANTIZED_KINDS):
        if isinstance(module, nn.Linear) or kind.value.startswith("bnb"):
            return skip_init(nn.Linear, module.in_features, module.out_features, bias=module.bias is not None)
        return None  # transformers Conv1D: not stood in for
    if kind is LayerKind.MHA:
        return nn.MultiheadAttention(module.embed_dim, module.num_heads, bias=module.in_proj_bias is not None,
                                     batch_first=module.batch_first)
    convolution = {LayerKind.CONV1D: nn.Conv1d, LayerKind.CONV3D: nn.Conv3d}.get(
        kind, nn.Conv2d if kind.value.startswith("conv2d") else None)
    if convolution is not None:
        return skip_init(convolution, module.in_channels, module.out_channels, module.kernel_size, module.stride,
                         module.padding, module.dilation, module.groups, bias=module.bias is not None)
    if kind is LayerKind.EMBEDDING:
        return skip_init(nn.Embedding, module.num_embeddings, module.embedding_dim)
    if kind in (LayerKind.NORM, LayerKind.BLOCK):  # a copy is its own stand-in (blocks: counted once per shape)
        return copy.deepcopy(module)
    return None


_SHAPE_ATTRIBUTES = ("in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride", "padding",
                     "dilation", "groups", "embed_dim", "num_heads", "batch_first", "num_embeddings", "embedding_dim")


def _shape_key(module: nn.Module, kind: LayerKind) -> tuple:
    """What makes two layers' adapters the same size (the stand-in's arguments), without allocating a stand-in."""
    bias = getattr(module, "bias", None) is not None or getattr(module, "in_proj_bias", None) is not None
    # norms and blocks (their stand-in is a copy): told apart by their parameters' shapes
    shapes = tuple(tuple(p.shape) for p in module.parameters()) if kind in (LayerKind.NORM, LayerKind.BLOCK) else ()
    return (kind, type(module).__name__, bias, shapes, *(getattr(module, name, None) for name in _SHAPE_ATTRIBUTES))


def _is_feedforward(config: Any, path: str) -> bool:
    feedforward = getattr(config, "feedforward_modules", None) or []
    if isinstance(feedforward, str):
        return re.fullmatch(feedforward, path) is not None
    return any(path == key or path.endswith("." + key) for key in feedforward)


def _count_adapter(config: Any, module: nn.Module, kind: LayerKind, path: str) -> int | None:
    from peft import get_peft_model

    stand_in = _stand_in(module, kind)
    if stand_in is None:
        return None
    holder = nn.Module()
    holder.layer = stand_in
    probe = copy.deepcopy(config)
    for attribute, value in (("target_modules", ["layer"]), ("modules_to_save", None), ("layers_to_transform", None),
                             ("layers_pattern", None), ("exclude_modules", None), ("rank_pattern", {}),
                             ("alpha_pattern", {}), ("feedforward_modules", ["layer"] if _is_feedforward(config, path)
                                                     else [])):
        if hasattr(probe, attribute):
            setattr(probe, attribute, value)
    if hasattr(probe, "init_r"):
        probe.init_r = _rank_for(config, path)
    elif hasattr(probe, "r"):
        probe.r = _rank_for(config, path)
    base = {name for name, _ in holder.named_parameters()}
    try:
        with allow_unsupported(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            get_peft_model(holder, probe)  # not inject_adapter_in_model: VeRA needs a tuner
    except Exception:  # noqa: BLE001 - a layer PEFT cannot adapt has no count; the verdicts say why
        return None
    return sum(p.numel() for name, p in holder.named_parameters()
               if name.replace("base_layer.", "") not in base and p.requires_grad)


def check(model: nn.Module, config: Any) -> CompatReport:
    """Dry run of ``get_peft_model(model, config)``: per targeted module its layer kind, what the matrix says for
    training and merging, adapter vs base parameters; totals and trainable share. Never modifies ``model``.

    With ``target_modules=None`` the family's default preset is used, as ``get_peft_model`` would.
    """
    config = copy.deepcopy(config)
    method = method_name(config)
    complete_config(model, config, strict=True)  # as the injection pipeline would, on the copy
    preset = config.__dict__.get(PRESET_ATTRIBUTE)  # set by preset_config() or just now
    report = inspect_targets(model, config)
    prepare(model, config)  # on the copy: plans the fused layers LoRA adapts by slices
    plans = fused_plans(config)
    detection = detect_family(model) if preset in PRESETS else None  # block presets leave no layer out
    if detection is not None:
        report.dropped = dropped(detection, preset, method)
    report.total_params = sum(_logical_params(m) for m in model.modules() if not list(m.children()))
    counts: dict[tuple, int | None] = {}
    modules = dict(model.named_modules())
    checked = []
    for item in report.modules:
        module = _base_layer(modules[item.path])
        plan = plans.get(item.path)
        if plan is not None and item.train.status is not Status.REFUSED:
            checked.append(dataclasses.replace(item, adapter_params=plan.adapter_params, slices=plan.slices))
            continue
        key = (_shape_key(module, item.kind), _rank_for(config, item.path), _is_feedforward(config, item.path))
        if item.train.status is not Status.REFUSED and key not in counts:
            counts[key] = _count_adapter(config, module, item.kind, item.path)
        checked.append(dataclasses.replace(item, adapter_params=counts.get(key)))
    report.modules = checked
    if method == "adalora":
        report.adalora_ranks = (config.init_r, config.target_r)
    saved = list(getattr(config, "modules_to_save", None) or [])
    report.modules_to_save = saved
    report.modules_to_save_params = sum(
        p.numel() for name, p in model.named_parameters()
        if any(name == key or name.startswith(key + ".") or f".{key}." in f".{name}" for key in saved))
    return report

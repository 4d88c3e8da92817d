"""LoRA on chosen slices of fused projections: the request a config carries, the plan per layer, the factor swap.

Flow: a request (which of q, k, v, plus ``o`` for nn.MultiheadAttention's out_proj) sits in the config's
``__dict__``, outside its dataclass fields, so ``adapter_config.json`` stays PEFT's own. At injection (hook
``vision-default-targets``) :func:`prepare` plans every targeted fused layer and writes its stacked rank
(r per slice) and alpha into ``rank_pattern`` / ``alpha_pattern``: the config a plain PEFT LoRA of that layer needs.
PEFT then builds its usual LoRA layers and :func:`apply` replaces their factors with
:class:`~peft_vision_ext.fused.factors.BlockFactor` s, so only the slices' blocks train. ``fused_slices.json`` beside
the adapter (hook ``fused-qkv-slices``) tells the plugin to rebuild that layout on load; without the plugin the
adapter loads as the equivalent whole-layer LoRA.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import FusedSlicesError, name_list
from ..targets import method_name, targeted_modules
from .factors import BlockFactor
from .layout import FusedLayout, fused_layout

logger = logging.getLogger("peft_vision_ext")

REQUEST_ATTRIBUTE = "_peft_vision_ext_fused_slices"
SIDECAR = "fused_slices.json"
FORMAT_VERSION = 1
SLICE_NAMES = ("q", "k", "v", "o")  # o: the out_proj of an nn.MultiheadAttention (other models have their own)
DEFAULT_SLICES = ("q", "v")  # the LoRA paper's W_q and W_v: what use_fused_slices(config) asks for
#: How the presets adapt a fused q/k/v projection that LoRA targets: ``"whole"`` (one rank-r LoRA on the layer, plain
#: PEFT, loadable without layout metadata) or ``"slices"`` (the preset's q/k/v roles, each slice its own rank-r LoRA).
#: Slices become the default only if a slice variant beats whole-layer LoRA by at least two standard errors of the
#: paired difference on every fused-projection task we measured (benchmarks/results/fused_qkv.json: ViT,
#: fused_qkv_swin.json: Swin; tests/test_fused_default.py applies that rule to the files). They do not: on the ViT
#: task q/v slices end 2.12 +- 1.61 points below whole qkv at the same parameter count.
PRESET_FUSED = "whole"
FUSED_CHOICES = ("whole", "slices")


@dataclass(frozen=True)
class ModulePlan:
    """How one fused layer is adapted: ``rank`` and ``alpha`` per slice; PEFT sees their stacked values."""
    parts: tuple[str, ...]
    slices: tuple[str, ...]  # the adapted parts, in row order
    width: int
    in_features: int
    rank: int
    alpha: float
    mha: bool = False
    out_proj: bool = False  # nn.MultiheadAttention only: its out_proj gets its own rank-r LoRA

    @property
    def layout(self) -> FusedLayout:
        return FusedLayout(self.parts, self.width, self.in_features, self.mha)

    @property
    def stacked_rank(self) -> int:
        return self.rank * len(self.slices)

    @property
    def adapter_params(self) -> int:
        """Trainable parameters: A (r rows per slice) and each slice's B block, plus an MHA out_proj's own LoRA."""
        k = len(self.slices)
        return k * self.rank * (self.in_features + self.width) + (2 * self.rank * self.width if self.out_proj else 0)

    def stacked_alpha(self, use_rslora: bool) -> float:
        """The alpha that gives the stacked rank the per-slice scaling (alpha / r, or alpha / sqrt(r) for rsLoRA)."""
        k = len(self.slices)
        value = self.alpha * (math.sqrt(k) if use_rslora else k)
        return int(value) if float(value).is_integer() else value


@dataclass
class FusedRequest:
    slices: tuple[str, ...]  # () = whole layers
    explicit: bool  # set by the user (errors are raised) rather than implied by a preset (falls back quietly)
    modules: dict[str, ModulePlan] = field(default_factory=dict)


def use_fused_slices(config: Any, slices: Iterable[str] | str = DEFAULT_SLICES) -> Any:
    """Adapt fused projections (timm ``qkv``/``kv``, ``nn.MultiheadAttention``) slice by slice, each slice with its
    own rank-``r`` LoRA; ``"whole"`` adapts them as one layer (one rank-``r`` update shared by q, k and v).

    ``slices``: any of ``"q"``, ``"k"``, ``"v"`` (and ``"o"``: the out_proj that PEFT's nn.MultiheadAttention layer
    always wraps). The presets set this for you (``attention``: q and v; ``attention-full``: all of them); call it to
    override a preset or to slice explicit ``target_modules``. LoRA only. Returns ``config``.
    """
    if method_name(config) != "lora":
        raise FusedSlicesError(f"use_fused_slices: LoRA only (got {type(config).__name__}); other methods adapt "
                               "fused layers as a whole.")
    if isinstance(slices, str):
        if slices != "whole":
            raise FusedSlicesError(f"use_fused_slices(config, {slices!r}): pass 'whole' or a list of slices from "
                                   f"{', '.join(SLICE_NAMES)}.")
        chosen: tuple[str, ...] = ()
    else:
        chosen = tuple(s for s in SLICE_NAMES if s in set(slices))
        unknown = sorted(set(slices) - set(SLICE_NAMES))
        if unknown or not set(chosen) & {"q", "k", "v"}:
            raise FusedSlicesError(f"use_fused_slices: slices {sorted(set(slices))} must name at least one of q, k, v "
                                   f"(and optionally o); unknown: {unknown or 'none'}.")
    config.__dict__[REQUEST_ATTRIBUTE] = FusedRequest(chosen, explicit=True)
    return config


def request_of(config: Any) -> FusedRequest | None:
    return config.__dict__.get(REQUEST_ATTRIBUTE)


def request_preset_slices(config: Any, roles: Iterable[Any], fused: str = PRESET_FUSED) -> None:
    """A preset's request: with ``fused="slices"`` the q/k/v (and o) roles it selects become slices; with
    ``"whole"`` fused layers are left to PEFT's whole-layer LoRA. An explicit request is kept. ``fused`` is one of
    ``FUSED_CHOICES`` (preset_config checks what users pass)."""
    if fused == "whole" or method_name(config) != "lora" or request_of(config) is not None:
        return
    roles = {getattr(role, "value", role) for role in roles}
    slices = tuple(s for s in SLICE_NAMES if s in roles)
    if set(slices) & {"q", "k", "v"}:
        config.__dict__[REQUEST_ATTRIBUTE] = FusedRequest(slices, explicit=False)


def fused_plans(config: Any) -> dict[str, ModulePlan]:
    """Module path -> plan of every layer adapted slice by slice under ``config`` (empty before injection)."""
    request = request_of(config)
    return dict(request.modules) if request else {}


def _unsupported_options(config: Any) -> list[str]:
    problems = []
    if getattr(config, "use_dora", False):
        problems.append("use_dora=True (DoRA's magnitude is per output row of the whole layer)")
    if getattr(config, "lora_bias", False):
        problems.append("lora_bias=True")
    if getattr(config, "fan_in_fan_out", False):
        problems.append("fan_in_fan_out=True")
    init = getattr(config, "init_lora_weights", True)
    if init not in (True, False, "gaussian"):
        problems.append(f"init_lora_weights={init!r} (it initialises A and B of the whole layer from its weights)")
    return problems


def prepare(model: nn.Module, config: Any) -> None:
    """Plan every targeted fused layer and give it its stacked rank/alpha in the config's patterns (idempotent)."""
    request = request_of(config)
    if request is None or not request.slices or method_name(config) != "lora":
        return
    problems = _unsupported_options(config)
    if problems:
        if request.explicit:
            raise FusedSlicesError(f"LoRA on fused slices does not support {', '.join(problems)}. Use "
                                   "peft_vision_ext.use_fused_slices(config, 'whole') to adapt fused layers whole. "
                                   "The model was not modified.")
        logger.info("peft-vision-ext: fused qkv layers adapted whole, not by slices, because of %s",
                    ", ".join(problems))
        return
    undetermined = []
    for name, _module in targeted_modules(model, config):
        try:
            layout = fused_layout(model, name)
        except FusedSlicesError:
            if request.explicit:
                raise
            undetermined.append(name)
            continue
        if layout is None:
            continue
        plan = request.modules.get(name)
        if plan is not None:
            if plan.layout != layout:
                raise FusedSlicesError(f"{name}: the adapter's fused-slices layout {plan.layout} does not match this "
                                       f"model's layer ({layout}). The model was not modified.")
            continue
        slices = tuple(p for p in layout.parts if p in request.slices)
        if not slices:
            raise FusedSlicesError(f"{name} is a fused {'/'.join(layout.parts)} projection, none of whose slices was "
                                   f"asked for ({', '.join(request.slices)}). Target it with other slices or leave it "
                                   "out of target_modules. The model was not modified.")
        rank, alpha = _effective_rank_alpha(config, name)
        request.modules[name] = ModulePlan(layout.parts, slices, layout.width, layout.in_features, rank, alpha,
                                           layout.mha, layout.mha and "o" in request.slices)
    if undetermined:
        warnings.warn(f"peft-vision-ext: the preset adapts {name_list(undetermined)} ({len(undetermined)} fused q/k/v "
                      "layers) whole: their slices cannot be told from the model's structure (no head count on the "
                      "attention module). peft_vision_ext.use_fused_slices(config) makes this an error; "
                      "use_fused_slices(config, 'whole') silences it.", stacklevel=2)
    _write_patterns(config, request)


def _effective_rank_alpha(config: Any, name: str) -> tuple[int, float]:
    """What PEFT would give ``name``: rank_pattern / alpha_pattern first, else r / lora_alpha."""
    from peft.utils.other import get_pattern_key

    rank_pattern = config.rank_pattern or {}
    alpha_pattern = config.alpha_pattern or {}
    rank = rank_pattern.get(get_pattern_key(list(rank_pattern), name), config.r)
    alpha = alpha_pattern.get(get_pattern_key(list(alpha_pattern), name), config.lora_alpha)
    return int(rank), alpha


def _write_patterns(config: Any, request: FusedRequest) -> None:
    # Full module paths, placed first: PEFT takes the first pattern that matches, and a user's broader pattern
    # ("qkv": 4) already went into the per-slice rank.
    ranks = {name: plan.stacked_rank for name, plan in request.modules.items()}
    alphas = {name: plan.stacked_alpha(bool(getattr(config, "use_rslora", False)))
              for name, plan in request.modules.items()}
    config.rank_pattern = {**ranks, **{k: v for k, v in (config.rank_pattern or {}).items() if k not in ranks}}
    config.alpha_pattern = {**alphas, **{k: v for k, v in (config.alpha_pattern or {}).items() if k not in alphas}}


def apply(model: nn.Module, adapter_name: str, config: Any) -> None:
    """Replace the LoRA factors PEFT built on planned layers with block factors (after injection)."""
    for name, plan in fused_plans(config).items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            continue
        if adapter_name not in getattr(layer, "lora_B", {}) or isinstance(layer.lora_B[adapter_name], BlockFactor):
            continue
        r = plan.rank
        layout = plan.layout
        layer.lora_B[adapter_name] = BlockFactor(
            layer.lora_B[adapter_name].weight,
            [(layout.start(s), layout.start(s) + plan.width, i * r, (i + 1) * r) for i, s in enumerate(plan.slices)])
        if plan.mha:
            out_proj = layer.base_layer.out_proj
            a, b = out_proj.lora_A[adapter_name].weight, out_proj.lora_B[adapter_name].weight
            out_proj.lora_A[adapter_name] = BlockFactor(a, [(0, r, 0, a.shape[1])] if plan.out_proj else [])
            out_proj.lora_B[adapter_name] = BlockFactor(b, [(0, b.shape[0], 0, r)] if plan.out_proj else [])


def write_sidecar(config: Any, directory: str) -> None:
    """``fused_slices.json`` for an adapter with sliced layers; a stale one from an earlier save is removed."""
    path = os.path.join(directory, SIDECAR)
    plans = fused_plans(config)
    if not plans:
        if os.path.isfile(path):
            os.remove(path)
        return
    request = request_of(config)
    data = {"format_version": FORMAT_VERSION, "slices": list(request.slices),
            "modules": {name: dataclasses.asdict(plan) for name, plan in plans.items()}}
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2)


def attach_sidecar(config: Any, data: dict[str, Any]) -> None:
    """The request and plans read from a saved ``fused_slices.json`` (so the plugin rebuilds the same layout)."""
    if data.get("format_version") != FORMAT_VERSION:
        raise FusedSlicesError(f"{SIDECAR} has format_version {data.get('format_version')!r}; this peft-vision-ext "
                               f"reads {FORMAT_VERSION}. Upgrade peft-vision-ext, or load with plain PEFT.")
    modules = {}
    for name, plan in data["modules"].items():
        modules[name] = ModulePlan(**{**plan, "parts": tuple(plan["parts"]), "slices": tuple(plan["slices"])})
    config.__dict__[REQUEST_ATTRIBUTE] = FusedRequest(tuple(data["slices"]), explicit=True, modules=modules)

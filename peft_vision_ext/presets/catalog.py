"""Presets as data: each preset is a set of roles. Rendered into the README by ``peft-vision presets``."""

from __future__ import annotations

from dataclasses import dataclass

from packaging.version import Version

from .roles import Role


@dataclass(frozen=True)
class Preset:
    name: str
    roles: frozenset[Role]
    description: str


_ATTN_QV = frozenset({Role.Q, Role.V, Role.QKV, Role.MHA})
_ATTN_FULL = _ATTN_QV | {Role.K, Role.O}
_MLP = frozenset({Role.FC1, Role.FC2})
_ALL_LINEAR = _ATTN_FULL | _MLP | {Role.LINEAR}
_CONV = frozenset({Role.CONV, Role.POINTWISE})
_CONV_DW = _CONV | {Role.DEPTHWISE}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("attention", _ATTN_QV, "query and value projections (the fused qkv where attention is fused)"),
        Preset("attention-full", _ATTN_FULL, "query, key, value and output projections"),
        Preset("mlp", _MLP, "MLP / pointwise expansion and contraction (fc1, fc2; ConvNeXt pwconv)"),
        Preset("attention+mlp", _ATTN_FULL | _MLP, "attention-full and mlp"),
        Preset("all-linear", _ALL_LINEAR, "every Linear of the backbone (never the task head)"),
        Preset("conv", _CONV, "k x k and 1 x 1 convolutions with groups == 1 (not the stem)"),
        Preset("conv+depthwise", _CONV_DW, "conv plus depthwise and grouped convolutions"),
        Preset("all", _ALL_LINEAR | _CONV_DW | {Role.STEM}, "every Linear and Conv2d of the backbone, stem included"),
    )
}

#: Layer kinds each PEFT method can wrap -> first PEFT release where it works (measured: LoHa/LoKr read
#: grouped conv weights with the wrong shape before 0.20). AdaLoRA's Conv2d support (any groups) is provided
#: by this plugin on every version. Only LoRA wraps a whole nn.MultiheadAttention. LoRA on grouped convs needs
#: the rank to divide ``groups``, so presets leave those to explicit targets; LoRA's conv ignores ``dilation``
#: (its lora_A output has the wrong size: measured on timm skresnet18), so presets skip dilated convs for LoRA.
METHOD_LAYER_SUPPORT: dict[str, dict[str, str]] = {
    "lora": {"linear": "0.15", "conv2d": "0.15", "mha": "0.15"},
    "loha": {"linear": "0.15", "conv2d": "0.15", "conv2d-dilated": "0.15", "conv2d-grouped": "0.20"},
    "lokr": {"linear": "0.15", "conv2d": "0.15", "conv2d-dilated": "0.15", "conv2d-grouped": "0.20"},
    "adalora": {"linear": "0.15", "conv2d": "0.15", "conv2d-dilated": "0.15", "conv2d-grouped": "0.15"},
    "ia3": {"linear": "0.15", "conv2d": "0.15", "conv2d-dilated": "0.15", "conv2d-grouped": "0.21"},
}


def method_layer_kinds(method: str, peft_version: Version) -> frozenset[str] | None:
    """Layer kinds ``method`` can wrap on ``peft_version``; ``None`` for a method we know nothing about."""
    support = METHOD_LAYER_SUPPORT.get(method)
    if support is None:
        return None
    return frozenset(kind for kind, since in support.items() if peft_version >= Version(since))


def presets_markdown() -> str:
    """The presets table of the README (a test keeps the two identical)."""
    rows = ["| preset | selects |", "|---|---|"]
    rows += [f"| `{p.name}` | {p.description} |" for p in PRESETS.values()]
    return "\n".join(rows)

"""Presets as data: each preset is a set of roles. Its table is rendered into the docs (guides/presets.md) by
``docs/generate.py``."""

from __future__ import annotations

from dataclasses import dataclass

from packaging.version import Version

from ..families.roles import Part, Role
from ..matrix.rows import PRESET_METHODS
from ..matrix.verdicts import Operation, kinds_supporting


@dataclass(frozen=True)
class Preset:
    """A named set of layer roles, optionally restricted to parts of a task model (backbone, neck, heads, ...)."""

    name: str
    roles: frozenset[Role]
    description: str
    parts: frozenset[Part] | None = None  # None: wherever the roles occur (a dual encoder's text tower only on request)


_ATTN_QV = frozenset({Role.Q, Role.V, Role.QKV, Role.KV, Role.MHA})
_ATTN_FULL = _ATTN_QV | {Role.K, Role.O}
_MLP = frozenset({Role.FC1, Role.FC2})
_ALL_LINEAR = _ATTN_FULL | _MLP | {Role.LINEAR}
_CONV = frozenset({Role.CONV, Role.POINTWISE})
_CONV_DW = _CONV | {Role.DEPTHWISE}
_TRANSFORMER = _ATTN_FULL | _MLP | {Role.LINEAR}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("attention", _ATTN_QV, "query and value projections; a fused qkv / kv / nn.MultiheadAttention layer "
               "whole (LoRA with fused=\"slices\": its q and v slices)"),
        Preset("attention-full", _ATTN_FULL, "query, key, value and output projections (fused layers whole; LoRA with "
               "fused=\"slices\": every slice, and an nn.MultiheadAttention's out_proj)"),
        Preset("mlp", _MLP, "MLP / pointwise expansion and contraction (fc1, fc2; ConvNeXt pwconv)"),
        Preset("attention+mlp", _ATTN_FULL | _MLP, "attention-full and mlp"),
        Preset("all-linear", _ALL_LINEAR, "every Linear of the backbone (never the task head)"),
        Preset("conv", _CONV, "k x k and 1 x 1 convolutions with groups == 1 (not the stem)"),
        Preset("conv+depthwise", _CONV_DW, "conv plus depthwise and grouped convolutions"),
        Preset("all", _ALL_LINEAR | _CONV_DW | {Role.STEM}, "every Linear and Conv2d of the backbone, stem included"),
        Preset("ssf", _ALL_LINEAR | _CONV_DW | {Role.STEM, Role.NORM}, "every Linear, Conv2d and norm layer of the "
               "backbone, stem included (SSF's default on transformers; layers whose parent reads their weight "
               "itself, as timm BEiT/EVA's fused qkv, are left out for SSF, which could not merge there)"),
        Preset("norm+linear", _ALL_LINEAR | {Role.NORM}, "every norm and Linear layer of the backbone (SSF's default "
               "on CNNs and hybrids: a conv's norm follows it, so a scale and shift after the conv as well would "
               "repeat it; measured, that pair diverged on MobileNetV2)"),
        # Task models (detection, segmentation, depth): the same roles, restricted to parts of the model.
        Preset("backbone", _ATTN_QV | _CONV, "the backbone only: its attention q/v or its groups == 1 convolutions "
               "(not the stem)", frozenset({Part.BACKBONE})),
        Preset("backbone+neck", _ATTN_QV | _CONV | {Role.LINEAR}, "backbone plus the neck (FPN, input projection, "
               "pixel decoder, hybrid encoder)", frozenset({Part.BACKBONE, Part.NECK})),
        Preset("encoder+decoder", _TRANSFORMER, "every Linear of a detector's transformer encoder and decoder "
               "(attention, MLP, query/box MLPs)", frozenset({Part.ENCODER, Part.DECODER})),
        Preset("decoder", _TRANSFORMER, "every Linear of the transformer decoder (object or mask queries)",
               frozenset({Part.DECODER})),
        Preset("heads", _CONV | _MLP | {Role.LINEAR}, "the pretrained, class-agnostic head layers: RPN, RoI box / "
               "mask / keypoint towers, dense-head towers (never the re-initialised predictors)",
               frozenset({Part.HEADS})),
        Preset("pretrained", _ATTN_QV | _CONV | {Role.LINEAR}, "in every part a task model's pretrained weights "
               "cover (backbone, neck, transformer, heads): attention q/v, groups == 1 convolutions (not the stem) "
               "and Linear layers outside MLP blocks; never the re-initialised predictors",
               frozenset({Part.BACKBONE, Part.NECK, Part.ENCODER, Part.DECODER, Part.HEADS})),
    )
}
"""Every preset by name. ``preset_config(model, method, name)`` / ``resolve_targets(model, name)`` select its layers
on a model; a family's default preset per method is used when ``target_modules`` is left open."""

#: Parts a preset without its own parts selects from. A dual encoder's text tower is adapted on request only
#: (``towers="text"`` / ``"both"``): this is a vision plugin, and the default should not retrain a language model.
VISION_PARTS = frozenset(Part) - {Part.TEXT}
TOWERS: dict[str, frozenset[Part]] = {"vision": VISION_PARTS, "text": frozenset({Part.TEXT}), "both": frozenset(Part)}

#: The methods presets resolve defaults for (the first five of the compatibility matrix).
#: The methods presets serve (the method table: :data:`peft_vision_ext.matrix.rows.PRESET_METHODS`).
SUPPORTED_METHODS: tuple[str, ...] = PRESET_METHODS


def method_layer_kinds(method: str, peft_version: Version) -> frozenset[str] | None:
    """Layer kinds a preset may give ``method`` on ``peft_version``: those the compatibility matrix lets it train
    unconditionally (so LoRA never gets grouped or dilated convs from a preset); ``None`` for an unknown method."""
    kinds = kinds_supporting(method, Operation.TRAIN, peft_version)
    return None if kinds is None else frozenset(kind.value for kind in kinds)


def presets_markdown() -> str:
    """The presets table of docs/guides/presets.md (docs/generate.py writes it; tests keep the two identical)."""
    rows = ["| preset | selects |", "|---|---|"]
    rows += [f"| `{p.name}` | {p.description} |" for p in PRESETS.values()]
    rows += [f"| `{name}` | {description} |" for name, description in BLOCK_PRESETS.items()]
    return "\n".join(rows)


#: Presets of whole modules (a parallel adapter sits beside each; AdaptFormer), resolved from the model's structure
#: (:func:`peft_vision_ext.families.roles.mlp_blocks`, :func:`~peft_vision_ext.families.roles.residual_blocks`).
BLOCK_PRESETS: dict[str, str] = {
    "blocks": "every MLP block of the backbone (a module holding an MLP's fc1 and fc2: timm `blocks.N.mlp`, "
              "transformers 5 `layers.N.mlp`, torchvision `encoder_layer_N.mlp`, ConvNeXt's MLP); on CNNs (and "
              "models without an MLP block), every residual conv block (ResNet BasicBlock / Bottleneck, MobileNet / "
              "EfficientNet inverted residuals); AdaptFormer's default",
}

"""Structural role inference: what each layer of a vision model *is* (query, fused qkv, MLP, depthwise conv...).

Every layer that an adapter could wrap gets exactly one :class:`Role`. Names help (``q_proj``, ``qkv``,
``fc1``) but are not required: an unknown model is classified by module types, by the attention block a
Linear sits in, by fused ``out == 3 * in`` shapes, and by the ``groups`` of its convolutions. Families
(see :mod:`peft_vision_ext.families.registry`) only add regex overrides where structure is ambiguous.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

from torch import nn

from ..layers.kinds import NORM_TYPES, LayerKind, layer_kind
from ..layers.kinds import is_linear as _is_linear
from ..module_refs import list_held_modules


class Role(str, Enum):
    Q = "q"
    K = "k"
    V = "v"
    QKV = "qkv"  # fused query/key/value projection (timm ``attn.qkv``)
    KV = "kv"  # fused key/value projection (timm PVT-v2 / Twins ``attn.kv``)
    MHA = "mha"  # a whole nn.MultiheadAttention (torchvision ViT): fused qkv *and* output projection
    O = "o"  # noqa: E741 - attention output projection, the name used in the papers
    FC1 = "fc1"  # MLP expansion (also ConvNeXt pwconv1, SwiGLU gate/value)
    FC2 = "fc2"  # MLP contraction (also ConvNeXt pwconv2)
    LINEAR = "linear"  # any other Linear of the backbone (Swin patch merging, SegFormer decode MLPs...)
    CONV = "conv"  # Conv2d k x k, groups == 1
    POINTWISE = "pointwise"  # Conv2d 1 x 1, groups == 1
    DEPTHWISE = "depthwise"  # Conv2d with groups > 1 (depthwise and grouped)
    STEM = "stem"  # the convolution that sees the image (patch embedding, ResNet conv1, conv_stem)
    HEAD = "head"  # task head: classifier, decode head; trained in full via modules_to_save
    NORM = "norm"
    # the parent never calls the layer but reads its weight itself (DETR's box attention map convolves with
    # k_proj.weight): an adapter there would never act, so no preset selects it
    UNCALLED = "uncalled"


class Part(str, Enum):
    """Where a layer sits in a task model: presets can restrict themselves to parts (``backbone``, ``decoder``...).

    Families map module paths to parts (``VisionFamily.parts``); a layer no rule places is in the backbone, so a
    classification model is all backbone (and head).
    """
    BACKBONE = "backbone"  # the pretrained feature extractor (ResNet body, ViT encoder, Swin stages)
    NECK = "neck"  # feature pyramid / input projection / pixel decoder / hybrid encoder between backbone and heads
    ENCODER = "encoder"  # transformer encoder over backbone features (DETR family)
    DECODER = "decoder"  # transformer decoder over object queries / mask queries
    HEADS = "heads"  # pretrained, class-agnostic head layers: RPN, RoI box/mask towers, dense-head towers
    TEXT = "text"  # the text tower of a dual encoder (CLIP, SigLIP, OWL-ViT, Grounding DINO)


ATTENTION_ROLES = frozenset({Role.Q, Role.K, Role.V, Role.QKV, Role.KV, Role.MHA, Role.O})
LINEAR_ROLES = ATTENTION_ROLES | {Role.FC1, Role.FC2, Role.LINEAR}
CONV_ROLES = frozenset({Role.CONV, Role.POINTWISE, Role.DEPTHWISE, Role.STEM})


# Last path component -> role, for Linear layers inside an attention block.
_ATTENTION_NAMES: dict[str, Role] = {
    **dict.fromkeys(("query", "q_proj", "q", "q_lin", "to_q", "wq"), Role.Q),
    **dict.fromkeys(("key", "k_proj", "k", "k_lin", "to_k", "wk"), Role.K),
    **dict.fromkeys(("value", "v_proj", "v", "v_lin", "to_v", "wv"), Role.V),
    **dict.fromkeys(("qkv", "in_proj", "to_qkv", "qkv_proj", "wqkv"), Role.QKV),
    **dict.fromkeys(("kv", "to_kv", "kv_proj", "wkv"), Role.KV),
    **dict.fromkeys(("o_proj", "out_proj", "proj", "out", "o", "out_lin", "to_out", "wo", "dense"), Role.O),
}
_WRAPPER_LEAVES = frozenset({"linear", "base_layer", "inner", "layer"})
# Compound names such as CvT's ``projection_query``.
_ATTENTION_PARTS = (
    (re.compile(r"(^|_)(query|q)(_|$)"), Role.Q),
    (re.compile(r"(^|_)(key|k)(_|$)"), Role.K),
    (re.compile(r"(^|_)(value|v)(_|$)"), Role.V),
    (re.compile(r"(^|_)(qkv|queries_keys_values)(_|$)"), Role.QKV),
    (re.compile(r"(^|_)kv(_|$)"), Role.KV),
)
_ATTENTION_SCOPE = re.compile(r"(^|\.)(attn|attention|self_attn|self_attention|mha|msa|wmsa)(\.|$)", re.I)
_MLP_SCOPE = re.compile(
    r"(^|\.)(mlp|mlp_\w+|ffn|ff|feed_forward|feedforward|intermediate|fc1|fc2|pwconv1|pwconv2)(\.|$)")
_DOWNSAMPLE_SCOPE = re.compile(r"(^|\.)(downsample|downsampling_layer|reduction|patch_merging|merge)(\.|$)")
# HF transformers 4.x ViT-style blocks: ``layer.N.intermediate.dense`` / ``layer.N.output.dense``.
_HF4_MLP_OUT = re.compile(r"(^|\.)output\.dense$")


@dataclass(frozen=True)
class LayerInfo:
    """One adaptable (or head/norm) layer of a model, with the role it plays."""
    name: str
    role: Role
    layer_kind: str  # a layers.kinds.LayerKind value, or "norm" for norms and heads of other types
    layer_type: str  # class name: "Linear", "Conv2d", "NonDynamicallyQuantizableLinear", ...
    params: int
    groups: int = 1
    kernel_size: tuple[int, ...] = ()
    part: Part = Part.BACKBONE


def _layer_kind(module: nn.Module) -> str:
    kind = layer_kind(module)
    return "norm" if kind is LayerKind.OTHER else kind.value


def _features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear or a transformers Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.weight.shape[0], module.weight.shape[1]


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=True))


def _linear_role(name: str, module: nn.Module, scope_is_attention: bool) -> Role:
    parts = name.split(".")
    # A Linear wrapped in a named container (timm Gemma4 ViT: ``attn.q_proj.linear``) takes the container's name.
    leaf = parts[-2] if parts[-1] in _WRAPPER_LEAVES and len(parts) > 1 else parts[-1]
    in_features, out_features = _features(module)
    if scope_is_attention:
        if leaf in _ATTENTION_NAMES:
            return _ATTENTION_NAMES[leaf]
        for pattern, role in _ATTENTION_PARTS:
            if pattern.search(leaf):
                return role
        if in_features * 3 == out_features:
            return Role.QKV
        return Role.O
    if _DOWNSAMPLE_SCOPE.search(name):
        return Role.LINEAR
    if _HF4_MLP_OUT.search(name) or _MLP_SCOPE.search(name) or leaf in ("fc1", "fc2", "pwconv1", "pwconv2"):
        return Role.FC1 if out_features > in_features else Role.FC2
    return Role.LINEAR


def linear_role(model: nn.Module, name: str) -> Role:
    """The role of the Linear at ``name`` (a PEFT wrapper counts as the layer it wraps), as :func:`infer_layers`
    gives it without family overrides."""
    parts = name.split(".")
    ancestors = [model] + [model.get_submodule(".".join(parts[:i])) for i in range(1, len(parts))]
    module = model.get_submodule(name)
    module = getattr(module, "get_base_layer", lambda: module)()
    return _linear_role(name, module, _in_attention(name, ancestors))


def _conv_role(name: str, module: nn.Conv2d) -> Role:
    if module.groups > 1:
        return Role.DEPTHWISE
    if tuple(module.kernel_size) == (1, 1):
        if _MLP_SCOPE.search(name):  # a 1x1-conv MLP (timm ConvNeXt conv_mlp, SegFormer-style heads)
            return Role.FC1 if module.out_channels > module.in_channels else Role.FC2
        return Role.POINTWISE
    return Role.CONV


def _in_attention(name: str, ancestors: list[nn.Module]) -> bool:
    if _ATTENTION_SCOPE.search(name.rsplit(".", 1)[0] if "." in name else ""):
        return True
    return any(_is_attention_class(type(a).__name__) for a in ancestors[1:])


# A whole decoder / encoder / layer whose name mentions attention (Mask2Former's MaskedAttentionDecoder) is not an
# attention block: the MLP heads inside it would otherwise count as output projections.
_NOT_ATTENTION_SUFFIXES = ("Decoder", "Encoder", "Layer", "Model")


def _is_attention_class(name: str) -> bool:
    return ("Attention" in name or name.endswith("Attn")) and not name.endswith(_NOT_ATTENTION_SUFFIXES)


def _walk(model: nn.Module) -> Iterator[tuple[str, nn.Module, list[nn.Module]]]:
    """named_modules() with the chain of ancestors of each module (root first)."""
    stack: list[tuple[str, nn.Module, list[nn.Module]]] = [("", model, [])]
    while stack:
        name, module, ancestors = stack.pop()
        yield name, module, ancestors
        children = list(module.named_children())
        for child_name, child in reversed(children):
            stack.append((f"{name}.{child_name}" if name else child_name, child, [*ancestors, module]))


def infer_layers(
    model: nn.Module,
    head_names: Iterable[str] = (),
    overrides: Iterable[tuple[re.Pattern[str], Role]] = (),
    parts: Iterable[tuple[re.Pattern[str], Part]] = (),
) -> list[LayerInfo]:
    """Classify every Linear, Conv2d, MultiheadAttention and norm layer of ``model``.

    ``head_names`` are module paths of the task head(s): everything inside them gets :attr:`Role.HEAD`.
    ``overrides`` are (regex on the full path, role) pairs applied before structural inference; ``parts`` are
    (regex on the full path, part) pairs, the first match wins and unmatched layers are in the backbone.
    """
    heads = tuple(head_names)
    overrides = tuple(overrides)
    parts = tuple(parts)
    held = list_held_modules(model)  # called through a plain list: a PEFT wrapper there would never run
    layers: list[LayerInfo] = []
    stem_seen = False
    for name, module, ancestors in _walk(model):
        if not name:
            continue
        if any(isinstance(a, nn.MultiheadAttention) for a in ancestors):
            continue  # out_proj of an nn.MultiheadAttention is adapted through the MHA itself
        is_mha = isinstance(module, nn.MultiheadAttention)
        is_linear = _is_linear(module)
        is_conv = isinstance(module, nn.Conv2d)
        is_norm = isinstance(module, NORM_TYPES)
        if not (is_mha or is_linear or is_conv or is_norm) or id(module) in held:
            continue
        role: Role | None = None
        if any(name == h or name.startswith(h + ".") for h in heads):
            role = Role.HEAD if not is_norm else Role.NORM
        if role is None:
            for pattern, override in overrides:
                if pattern.search(name):
                    role = override
                    break
        if role is None:
            if is_norm:
                role = Role.NORM
            elif is_mha:
                role = Role.MHA
            elif is_linear:
                role = _linear_role(name, module, _in_attention(name, ancestors))
            elif not stem_seen:
                role = Role.STEM  # the first convolution in module order is the one that sees the image
            else:
                role = _conv_role(name, module)
        if is_conv:
            stem_seen = True
        layers.append(
            LayerInfo(
                name=name,
                role=role,
                layer_kind=_layer_kind(module),
                layer_type=type(module).__name__,
                params=_param_count(module),
                groups=getattr(module, "groups", 1),
                kernel_size=tuple(getattr(module, "kernel_size", ())),
                part=next((part for pattern, part in parts if pattern.search(name)), Part.BACKBONE),
            )
        )
    return layers


# --------------------------------------------------------------------------------------------------
# Blocks: whole modules a parallel adapter (AdaptFormer) sits beside.
# --------------------------------------------------------------------------------------------------
#: Residual conv blocks by class name: ResNet BasicBlock / Bottleneck (timm, torchvision), MobileNet / EfficientNet
#: inverted residuals and depthwise-separable blocks, torchvision MBConv / CNBlock, timm ByobNet / RegNet blocks and
#: SelectiveKernelBasic, transformers ResNet / MobileNetV2 layers.
CONV_BLOCK_CLASS = re.compile(r"(Block|Bottleneck|Basic|InvertedResidual|DepthwiseSeparableConv|MBConv|BasicLayer"
                              r"|BottleNeckLayer)$")


def mlp_blocks(layers: Iterable[LayerInfo]) -> list[str]:
    """Modules of the backbone that hold an MLP's expansion and contraction as their own children (timm
    ``blocks.N.mlp``, transformers 5 ``layers.N.mlp``, torchvision ``encoder_layer_N.mlp``), in module order."""
    roles: dict[str, set[Role]] = {}
    for layer in layers:
        if layer.role in (Role.FC1, Role.FC2) and layer.part is Part.BACKBONE and "." in layer.name:
            roles.setdefault(layer.name.rpartition(".")[0], set()).add(layer.role)
    return [parent for parent, found in roles.items() if found == {Role.FC1, Role.FC2}]


def split_mlps(layers: Iterable[LayerInfo]) -> list[str]:
    """Expansion layers whose contraction has another parent (transformers 4.x ViT-style ``intermediate.dense`` /
    ``output.dense``): MLPs no single module holds."""
    parents = {layer.name.rpartition(".")[0] for layer in layers if layer.role is Role.FC2}
    return [layer.name for layer in layers
            if layer.role is Role.FC1 and layer.part is Part.BACKBONE and layer.name.rpartition(".")[0] not in parents]


def residual_blocks(model: nn.Module, heads: Iterable[str] = ()) -> list[str]:
    """The outermost residual conv blocks (by class name, holding at least two convolutions) outside the task heads,
    in module order."""
    heads = tuple(heads)
    found: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name == h or name.startswith(h + ".") for h in heads):
            continue
        if any(name.startswith(block + ".") for block in found):
            continue
        if CONV_BLOCK_CLASS.search(type(module).__name__) and sum(
                isinstance(inner, nn.Conv2d) for inner in module.modules()) >= 2:
            found.append(name)
    return found

"""The registry of vision families: small declarative entries, detected by model class and structure.

An entry says how to recognise a family (library + root class names, or transformers ``model_type``),
what kind of network it is (which decides the default preset per PEFT method), where its task head
lives, and (rarely) regex overrides for layers whose role structure alone cannot tell.
Registering a new family is one :func:`register_family` call; an unregistered model still gets a
structural family (``generic-transformer`` / ``generic-cnn`` / ``generic-hybrid``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from ..layers.kinds import CONTAINERS
from .roles import ATTENTION_ROLES, LayerInfo, Part, Role, infer_layers

Kind = Literal["transformer", "cnn", "hybrid"]
Library = Literal["timm", "transformers", "torchvision", "any"]

#: Default preset per PEFT method and kind of network, following the field's practice: attention for
#: ViT-style models; groups == 1 convolutions for CNNs with LoRA/AdaLoRA (LoRA's rank must divide
#: ``groups``; upstream AdaLoRA has no grouped convs), depthwise included for LoHa/LoKr which support
#: them; the pointwise (Linear) MLPs for ConvNeXt-style hybrids.
KIND_DEFAULTS: dict[str, dict[str, str]] = {
    "transformer": {"lora": "attention", "adalora": "attention", "loha": "attention", "lokr": "attention",
                    "ia3": "attention+mlp", "ssf": "ssf", "adaptformer": "blocks"},
    "cnn": {"lora": "conv", "adalora": "conv", "loha": "conv+depthwise", "lokr": "conv+depthwise", "ia3": "conv",
            "ssf": "norm+linear", "adaptformer": "blocks"},
    "hybrid": {"lora": "mlp", "adalora": "mlp", "loha": "all", "lokr": "all", "ia3": "mlp", "ssf": "norm+linear",
               "adaptformer": "blocks"},
}

#: Top-level children that are task heads in transformers/torchvision models.
HEAD_ATTRIBUTES = ("classifier", "head", "heads", "fc", "decode_head", "auxiliary_head", "head_dist",
                   "segmentation_head", "seg_head", "score")


@dataclass(frozen=True)
class VisionFamily:
    """One entry of the family registry: how to recognise a model (library + root class names, or transformers
    ``model_type``), what kind of network it is (which picks the default preset per PEFT method), and for task models
    where each part starts and which prediction heads are trained in full. Add one with :func:`register_family`."""

    name: str
    library: Library
    kind: Kind | None  # None: decided by the model's structure (UperNet follows its backbone)
    classes: tuple[str, ...] = ()  # root module class names
    model_types: tuple[str, ...] = ()  # transformers config.model_type
    description: str = ""
    defaults: Mapping[str, str] = field(default_factory=dict)  # method -> preset, over KIND_DEFAULTS
    overrides: tuple[tuple[str, Role], ...] = ()  # (regex on module path, role)
    # Task models: the Hub task (model card, pipeline tag); where each part starts (regex on module path -> part;
    # first match wins, the rest is backbone); the prediction heads a user re-initialises for new classes (regexes
    # matched against whole module paths), trained in full via modules_to_save instead of the generic head names.
    task: str | None = None
    parts: tuple[tuple[str, Part], ...] = ()
    heads: tuple[str, ...] | None = None  # None: the generic head attributes (classifier, head, fc, ...)
    why: str = ""  # one line for the docs' task table (guides/presets.md): what the default adapts and trains, and why

    def matches(self, model: nn.Module) -> bool:
        if self.library != "any" and model_library(model) != self.library:
            return False
        if self.model_types:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            # both given: one head class of an architecture (V-JEPA 2's video classifier, not its pretraining model)
            return model_type in self.model_types and (not self.classes or type(model).__name__ in self.classes)
        return type(model).__name__ in self.classes

    def default_preset(self, method: str) -> str | None:
        return self.defaults.get(method) or KIND_DEFAULTS.get(self.kind or "", {}).get(method)


_FAMILIES: dict[str, VisionFamily] = {}


def register_family(family: VisionFamily, *, replace: bool = False) -> VisionFamily:
    """Add a family to the registry (idempotent for an identical entry)."""
    existing = _FAMILIES.get(family.name)
    if existing is not None and existing != family and not replace:
        raise ValueError(f"A different vision family named {family.name!r} is already registered; "
                         "pass replace=True to override it.")
    _FAMILIES[family.name] = family
    return family


def families() -> tuple[VisionFamily, ...]:
    return tuple(_FAMILIES.values())


def model_library(model: nn.Module) -> str:
    root = type(model).__module__.split(".", 1)[0]
    return root if root in ("timm", "transformers", "torchvision") else "other"


# --------------------------------------------------------------------------------------------------
# The entries. Structure does most of the work (see roles.py); entries name, detect and set defaults.
# --------------------------------------------------------------------------------------------------
_T, _C, _H = "transformer", "cnn", "hybrid"
_IA3_MLP = {"ia3": "mlp"}
for _entry in (
    # timm
    VisionFamily("timm-vit", "timm", _T, ("VisionTransformer",),
                 description="ViT, DeiT, DeiT-3, DINO/DINOv2, CLIP/SigLIP image towers"),
    VisionFamily("timm-vit-distilled", "timm", _T, ("VisionTransformerDistilled",), description="DeiT distilled"),
    # Their attention computes F.linear(x, qkv.weight, q/v biases) itself: the plugin routes that call through the
    # adapter for additive methods (peft_vision_ext.routing); IA3 would scale the separate biases differently from
    # its own merge, so its default stays on the MLP.
    VisionFamily("timm-eva", "timm", _T, ("Eva",), description="EVA, EVA-02", defaults=_IA3_MLP),
    VisionFamily("timm-beit", "timm", _T, ("Beit",), description="BEiT, BEiT-v2", defaults=_IA3_MLP),
    VisionFamily("timm-swin", "timm", _T, ("SwinTransformer", "SwinTransformerV2", "SwinTransformerV2Cr"),
                 description="Swin, SwinV2", defaults=_IA3_MLP),
    VisionFamily("timm-convnext", "timm", _H, ("ConvNeXt",), description="ConvNeXt, ConvNeXt-V2"),
    VisionFamily("timm-resnet", "timm", _C, ("ResNet",), description="ResNet, ResNeXt, SE-ResNet"),
    VisionFamily("timm-efficientnet", "timm", _C, ("EfficientNet",),
                 description="EfficientNet, MobileNetV2, MNASNet, MixNet"),
    VisionFamily("timm-mobilenetv3", "timm", _C, ("MobileNetV3",), description="MobileNetV3"),
    VisionFamily("timm-regnet", "timm", _C, ("RegNet",), description="RegNetX/Y"),
    VisionFamily("timm-byobnet", "timm", _C, ("ByobNet",), description="ResNet-*ts, RegNetZ, GENet (BYOB nets)"),
    # transformers (model_type covers every head class of an architecture)
    VisionFamily("hf-vit", "transformers", _T, model_types=("vit",)),
    VisionFamily("hf-deit", "transformers", _T, model_types=("deit",)),
    VisionFamily("hf-dinov2", "transformers", _T, model_types=("dinov2", "dinov2_with_registers")),
    VisionFamily("hf-beit", "transformers", _T, model_types=("beit", "data2vec-vision")),
    VisionFamily("hf-swin", "transformers", _T, model_types=("swin", "swinv2")),
    VisionFamily("hf-convnext", "transformers", _H, model_types=("convnext", "convnextv2")),
    VisionFamily("hf-resnet", "transformers", _C, model_types=("resnet",)),
    VisionFamily("hf-mobilenet", "transformers", _C, model_types=("mobilenet_v1", "mobilenet_v2")),
    VisionFamily("hf-segformer", "transformers", _T, model_types=("segformer",)),
    VisionFamily("hf-dpt", "transformers", _T, model_types=("dpt",), parts=((r"^neck(\.|$)", Part.NECK),)),
    # Dual encoders (CLIPModel, SiglipModel): the text tower is adapted on request (presets' towers="text"/"both").
    VisionFamily("hf-clip-vision", "transformers", _T,
                 model_types=("clip_vision_model", "clip", "siglip_vision_model", "siglip", "siglip2_vision_model",
                              "siglip2", "metaclip_2", "chinese_clip", "altclip", "blip"),
                 parts=((r"(^|\.)(text_model|text_projection)(\.|$)", Part.TEXT),)),
    VisionFamily("hf-upernet", "transformers", None, model_types=("upernet",)),
    # torchvision
    VisionFamily("tv-resnet", "torchvision", _C, ("ResNet",)),
    # Its attention is an nn.MultiheadAttention, which only LoRA can wrap: the others default to the MLP.
    VisionFamily("tv-vit", "torchvision", _T, ("VisionTransformer",),
                 defaults={"loha": "mlp", "lokr": "mlp", "adalora": "mlp", "ia3": "mlp"}),
    VisionFamily("tv-swin", "torchvision", _T, ("SwinTransformer",), defaults=_IA3_MLP),  # F.linear(x, qkv.weight)
    VisionFamily("tv-convnext", "torchvision", _H, ("ConvNeXt",),
                 overrides=((r"\.block\.3$", Role.FC1), (r"\.block\.5$", Role.FC2))),  # CNBlock's pointwise MLP
    VisionFamily("tv-efficientnet", "torchvision", _C, ("EfficientNet",)),
    VisionFamily("tv-mobilenet", "torchvision", _C, ("MobileNetV2", "MobileNetV3")),
):
    register_family(_entry)


# --------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------
def head_names(model: nn.Module, family: VisionFamily | None = None) -> list[str]:
    """Module paths of the task head(s), trained in full (``modules_to_save``) rather than adapted.

    A family that names its prediction heads (``VisionFamily.heads``) gets exactly those, each under its first path
    (a module shared by two paths, such as Deformable DETR's ``class_embed`` and ``model.decoder.class_embed``, is
    listed once); other models get the generic head attributes.
    """
    if family is not None and family.heads is not None:
        patterns = [re.compile(pattern) for pattern in family.heads]
        # A pattern may also match the ModuleList holding the per-layer heads (`class_embed` beside `class_embed.0`):
        # modules_to_save cannot wrap a container, so only the layers count.
        found = [name for name, module in model.named_modules() if name and any(p.fullmatch(name) for p in patterns)
                 and not isinstance(module, CONTAINERS)]
        return [name for name in found if not any(name.startswith(other + ".") for other in found)]
    names: list[str] = []
    get_classifier = getattr(model, "get_classifier", None)
    if model_library(model) == "timm" and callable(get_classifier):
        classifier = get_classifier()
        by_id = {id(m): n for n, m in model.named_modules()}
        # Multi-head models (CrossViT, EfficientViM) return a ModuleList, which modules_to_save cannot wrap.
        candidates = [c for m in (classifier, getattr(model, "head_dist", None)) for c in _expand_container(m)]
        for module in candidates:
            if isinstance(module, nn.Module) and _has_weights(module) and id(module) in by_id:
                names.append(by_id[id(module)])
        return names
    for attribute in HEAD_ATTRIBUTES:
        module = getattr(model, attribute, None)
        if isinstance(module, nn.Module) and _has_weights(module):
            names.append(attribute)
    if family is None:
        names += [name for name in _wrapped_heads(model) if not any(name.startswith(n + ".") for n in names)]
    return names


def _wrapped_heads(model: nn.Module) -> list[str]:
    """The heads of registered models inside an unregistered one, by their path in it.

    A timm, torchvision or transformers model inside the user's own module (the usual way to give Trainer a model
    that returns a loss) is a generic model to the registry: without this its head, new and randomly initialised,
    was neither trained (no modules_to_save) nor kept out of quantization.
    """
    heads: list[str] = []
    found: list[str] = []
    for path, module in model.named_modules():
        if not path or any(path.startswith(outer + ".") for outer in found):
            continue
        family = next((f for f in _FAMILIES.values() if f.matches(module)), None)
        if family is not None:
            found.append(path)
            heads += [f"{path}.{name}" for name in head_names(module, family)]
    return heads


def _expand_container(module: object) -> list[object]:
    if isinstance(module, nn.ModuleList):
        return list(module)
    if isinstance(module, nn.ModuleDict):
        return list(module.values())
    return [module]


def _has_weights(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in module.modules())


def _structural_kind(layers: list[LayerInfo]) -> Kind | None:
    roles = {layer.role for layer in layers}
    if roles & ATTENTION_ROLES:
        return "transformer"
    if roles & {Role.FC1, Role.FC2}:
        return "hybrid"  # ConvNeXt-style (pointwise MLPs + depthwise convs) and MLP-Mixer-style models
    if roles & {Role.CONV, Role.POINTWISE, Role.DEPTHWISE}:
        return "cnn"
    return None


@dataclass(frozen=True)
class Detection:
    """What the registry found for a model: its family, kind, head(s) and every classified layer."""
    family: VisionFamily
    registered: bool
    heads: tuple[str, ...]
    layers: tuple[LayerInfo, ...]

    @property
    def kind(self) -> Kind:
        return self.family.kind

    @property
    def task(self) -> str | None:
        return self.family.task

    def parts_found(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for layer in self.layers:
            if layer.role not in (Role.HEAD, Role.NORM, Role.UNCALLED):
                counts[layer.part.value] = counts.get(layer.part.value, 0) + 1
        return counts

    def roles_found(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for layer in self.layers:
            counts[layer.role.value] = counts.get(layer.role.value, 0) + 1
        return counts


def detect_family(model: nn.Module) -> Detection | None:
    """Family of ``model`` and the role of each of its layers; ``None`` when nothing in it is adaptable."""
    family = next((f for f in _FAMILIES.values() if f.matches(model)), None)
    heads = tuple(head_names(model, family))
    overrides = [(re.compile(p), r) for p, r in family.overrides] if family else []
    parts = [(re.compile(p), part) for p, part in family.parts] if family else []
    layers = infer_layers(model, heads, overrides, parts)
    kind = _structural_kind(layers)
    if family is not None:
        if family.kind is None:
            family = dataclasses.replace(family, kind=kind or "transformer")
        return Detection(family, True, heads, tuple(layers))
    if kind is None:
        return None
    generic = VisionFamily(f"generic-{kind}", "any", kind, description="structural inference")
    return Detection(generic, False, heads, tuple(layers))

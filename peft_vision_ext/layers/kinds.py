"""Layer kinds: the rows of the compatibility matrix, read from a module's type and geometry."""

from __future__ import annotations

from enum import Enum

from torch import nn

#: module containers: PEFT can neither adapt nor wrap them (ModulesToSaveWrapper refuses them)
CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)
#: normalisation layers (the matrix's ``norm`` kind; the family registry's norm role)
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm1d/2d/3d
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


class LayerKind(str, Enum):
    """What a PEFT method has to wrap. The value is what the matrix, the docs and the CLI print."""
    LINEAR = "linear"
    LINEAR_4D = "linear-4d"  # a Linear fed channels-last 4-D input (timm Swin/ConvNeXt MLPs, HF ConvNeXt pwconv)
    CONV2D = "conv2d"  # k x k, groups == 1, dilation 1
    CONV2D_1X1 = "conv2d-1x1"  # pointwise, groups == 1
    CONV2D_GROUPED = "conv2d-grouped"  # groups > 1 (depthwise included)
    CONV2D_DILATED = "conv2d-dilated"  # groups == 1, dilation > 1
    MHA = "mha"  # torch.nn.MultiheadAttention (torchvision ViT)
    BNB_8BIT = "bnb-8bit"  # bitsandbytes Linear8bitLt
    BNB_4BIT = "bnb-4bit"  # bitsandbytes Linear4bit (nf4 / fp4)
    # A Linear4bit fed channels-last 4-D input (quantized Swin / ConvNeXt MLPs). Int8 layers have no 4-D kind:
    # bitsandbytes' int8 matmul cannot compute channels-last 4-D input (quantize() keeps those layers in full
    # precision), so there is no working base layer to adapt.
    BNB_4BIT_4D = "bnb-4bit-4d"
    CONV1D = "conv1d"  # nn.Conv1d (audio / sequence stems)
    CONV3D = "conv3d"  # nn.Conv3d (video tubelet patch embeddings)
    CONV_TRANSPOSE2D = "conv-transpose2d"  # nn.ConvTranspose2d (mask heads, segmentation decoders)
    EMBEDDING = "embedding"  # nn.Embedding (query / class / position tables of DETR-style heads)
    NORM = "norm"  # LayerNorm, BatchNorm, GroupNorm, InstanceNorm, RMSNorm (and subclasses: timm LayerNorm2d)
    BLOCK = "block"  # a module holding Linear / Conv2d layers (an MLP block, a residual conv block): AdaptFormer
    OTHER = "other"  # anything else a config may target (LayerNorm, custom layers, ...): not verified here

    def __str__(self) -> str:
        return self.value

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]

    @property
    def bits(self) -> int | None:
        """4 or 8 for bitsandbytes kinds, else None."""
        return {"bnb-4bit": 4, "bnb-8bit": 8}.get(self.value.removesuffix("-4d"))


_DESCRIPTIONS = {
    LayerKind.LINEAR: "nn.Linear (and transformers Conv1D)",
    LayerKind.LINEAR_4D: "nn.Linear applied to channels-last 4-D input (timm Swin / ConvNeXt MLP, HF ConvNeXt)",
    LayerKind.CONV2D: "nn.Conv2d k x k (k > 1), groups 1",
    LayerKind.CONV2D_1X1: "nn.Conv2d 1 x 1, groups 1",
    LayerKind.CONV2D_GROUPED: "nn.Conv2d with groups > 1 (depthwise and grouped)",
    LayerKind.CONV2D_DILATED: "nn.Conv2d with dilation > 1",
    LayerKind.MHA: "nn.MultiheadAttention",
    LayerKind.BNB_8BIT: "bitsandbytes Linear8bitLt (int8)",
    LayerKind.BNB_4BIT: "bitsandbytes Linear4bit (nf4 / fp4)",
    LayerKind.BNB_4BIT_4D: "bitsandbytes Linear4bit applied to channels-last 4-D input",
    LayerKind.CONV1D: "nn.Conv1d",
    LayerKind.CONV3D: "nn.Conv3d (video patch embeddings)",
    LayerKind.CONV_TRANSPOSE2D: "nn.ConvTranspose2d (mask heads, decoders)",
    LayerKind.EMBEDDING: "nn.Embedding",
    LayerKind.NORM: "norm layers: LayerNorm, BatchNorm, GroupNorm, InstanceNorm, RMSNorm",
    LayerKind.BLOCK: "a module holding Linear / Conv2d layers (an MLP block, a residual conv block)",
    LayerKind.OTHER: "any other module type",
}


def plain_norm(module: nn.Module) -> bool:
    """A norm layer whose forward is the normalisation and its affine map only (timm's BatchNormAct2d also applies an
    activation: not plain unless that is an identity). Dropout counts as plain: it is the identity at evaluation."""
    return isinstance(module, NORM_TYPES) and all(isinstance(child, (nn.Identity, nn.Dropout))
                                                  for child in module.children())


#: What timm's fused norm + activation layers (BatchNormAct2d, GroupNormAct, LayerNormAct, ...) apply after the
#: normalisation, in order: their forward is ``act(drop(norm(x)))``.
NORM_ACT_CHILDREN = ("drop", "act")


def norm_then_activation(module: nn.Module) -> bool:
    """A timm norm + activation layer (``act(drop(norm(x)))``): the normalisation's output can be reached by
    running it with those two children replaced by the identity."""
    return (isinstance(module, NORM_TYPES) and type(module).__module__.startswith("timm.")
            and {name for name, _ in module.named_children()} == set(NORM_ACT_CHILDREN))


def _bnb_kind(module: nn.Module) -> LayerKind | None:
    # By class name so that reading kinds never imports bitsandbytes (a model holding these layers already has).
    for cls in type(module).__mro__:
        if cls.__module__.startswith("bitsandbytes"):
            if cls.__name__ == "Linear8bitLt":
                return LayerKind.BNB_8BIT
            if cls.__name__ == "Linear4bit":
                return LayerKind.BNB_4BIT
    return None


def base_layer(module: nn.Module) -> nn.Module:
    """The layer a PEFT wrapper wraps (the module itself when it is not a wrapper)."""
    get_base_layer = getattr(module, "get_base_layer", None)
    return get_base_layer() if callable(get_base_layer) else module


def is_linear(module: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2 style, weight stored transposed) is a Linear for PEFT (fan_in_fan_out).
    return isinstance(module, nn.Linear) or (type(module).__name__ == "Conv1D" and hasattr(module, "nf"))


def layer_kind(module: nn.Module, input_ndim: int | None = None) -> LayerKind:
    """The matrix row of ``module``. ``input_ndim`` (seen in a forward pass) tells 4-D-fed Linears apart."""
    quantized = _bnb_kind(module)
    if quantized is not None:
        return _FOUR_D.get(quantized, quantized) if input_ndim == 4 else quantized
    if isinstance(module, nn.MultiheadAttention):
        return LayerKind.MHA
    if is_linear(module):
        return LayerKind.LINEAR_4D if input_ndim == 4 else LayerKind.LINEAR
    if type(module) is nn.Conv2d or (isinstance(module, nn.Conv2d) and not hasattr(module, "base_layer")):
        if module.groups > 1:
            return LayerKind.CONV2D_GROUPED
        if tuple(module.dilation) != (1, 1):
            return LayerKind.CONV2D_DILATED
        return LayerKind.CONV2D_1X1 if tuple(module.kernel_size) == (1, 1) else LayerKind.CONV2D
    if not hasattr(module, "base_layer"):  # PEFT dispatches on isinstance, so subclasses count (wrappers do not)
        if isinstance(module, NORM_TYPES):
            return LayerKind.NORM
        for cls, kind in _OTHER_LAYERS:
            if isinstance(module, cls):
                return kind
        # PEFT's modules_to_save wrapper (original_module + its trained copies) is a wrapper, not a block
        if not isinstance(module, CONTAINERS) and not hasattr(module, "original_module") and any(
                is_linear(inner) or isinstance(inner, nn.Conv2d) for inner in module.modules() if inner is not module):
            return LayerKind.BLOCK
    return LayerKind.OTHER


_FOUR_D = {LayerKind.BNB_4BIT: LayerKind.BNB_4BIT_4D}
#: Every bitsandbytes kind (layer_kind tells the 4-D-fed one apart only when given the input's dimensions).
QUANTIZED_KINDS = (LayerKind.BNB_8BIT, LayerKind.BNB_4BIT, LayerKind.BNB_4BIT_4D)
_OTHER_LAYERS = ((nn.Conv1d, LayerKind.CONV1D), (nn.Conv3d, LayerKind.CONV3D),
                 (nn.ConvTranspose2d, LayerKind.CONV_TRANSPOSE2D), (nn.Embedding, LayerKind.EMBEDDING))

"""``quantize(model, bits=4)``: the transformer blocks' Linear layers of any torch ViT -> bitsandbytes layers."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import QuantizationError
from ..families import detect_family
from ..families.roles import LINEAR_ROLES, Role
from ..layers.probe import input_ndims
from .bnb_layers import is_quantized, quantized_linear

#: Roles whose Linear layers are quantized by default: the attention and MLP projections of the blocks. The
#: task head, the patch embedding / stem and the norms stay in full precision (they are small, and the head and
#: norms train or feed the adapters). nn.MultiheadAttention reads out_proj.weight directly: not swappable.
QUANTIZED_ROLES = LINEAR_ROLES - {Role.MHA}
_QUANTIZABLE_DEVICES = ("cpu", "cuda", "xpu")


@dataclass(frozen=True)
class QuantizationPlan:
    bits: int
    layers: tuple[str, ...]  # module paths that become bitsandbytes layers
    kept: tuple[str, ...]  # Linear layers kept in full precision


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.endswith("." + p) or re.fullmatch(p, name) for p in patterns)


def plan(model: nn.Module, bits: int = 4, skip: Iterable[str] | None = None) -> QuantizationPlan:
    """Which Linear layers ``quantize`` would replace. Reads the model only."""
    if bits not in (4, 8):
        raise QuantizationError(f"bits must be 4 or 8 (bitsandbytes nf4/fp4 or int8); got {bits!r}.")
    quantized = [name for name, module in model.named_modules() if is_quantized(module)]
    if quantized:
        raise QuantizationError(f"{type(model).__name__} is already quantized ({quantized[0]}, +{len(quantized) - 1} "
                                "more bitsandbytes layers); quantize the full-precision model instead.")
    detection = detect_family(model)
    layers = detection.layers if detection is not None else ()
    linears = [layer for layer in layers if layer.layer_kind == "linear" and type(_module(model, layer.name))
               is nn.Linear]
    if skip is None:
        chosen = [layer.name for layer in linears if layer.role in QUANTIZED_ROLES]
    else:
        skip = list(skip)
        chosen = [layer.name for layer in linears if not _matches(layer.name, skip)]
    if not chosen:
        raise QuantizationError(
            f"{type(model).__name__} has no nn.Linear layer in its transformer blocks to quantize (found "
            f"{len(linears)} Linear layers, all kept: head/stem/skip). quantize() is for ViT-style models; "
            "CNN weights live in Conv2d layers, which bitsandbytes does not quantize.")
    if bits == 8:
        # bitsandbytes' int8 matmul fails on channels-last 4-D input (timm Swin's patch merging) once the layer has
        # run in training mode: those layers stay in full precision.

        ndims = input_ndims(model, chosen)
        chosen = [name for name in chosen if ndims.get(name, 3) != 4]
    kept = tuple(layer.name for layer in linears if layer.name not in chosen)
    return QuantizationPlan(bits, tuple(chosen), kept)


QUANTIZATION_RECORD = "_peft_vision_ext_quantization"


def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _device(model: nn.Module) -> torch.device:
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1:
        raise QuantizationError(f"{type(model).__name__} is spread over {sorted(map(str, devices))}; move it to one "
                                "device first.")
    device = devices.pop()
    if device.type not in _QUANTIZABLE_DEVICES:
        raise QuantizationError(f"bitsandbytes cannot quantize on {device} (it quantizes on "
                                f"{', '.join(_QUANTIZABLE_DEVICES)}); move the model with .to('cpu') or .to('cuda').")
    return device


def quantize(model: nn.Module, bits: int = 4, quant_type: str = "nf4", double_quant: bool = True,
             compute_dtype: torch.dtype = torch.float32, skip: Iterable[str] | None = None,
             gradient_checkpointing: bool = False, int8_threshold: float = 6.0) -> nn.Module:
    """Quantize the Linear layers of a ViT's blocks with bitsandbytes, in place; returns ``model``.

    Works on timm, torchvision and transformers ViTs and any torch model whose blocks the presets' role inference
    understands. The task head, the patch embedding and the norms stay in full precision (``skip``: the module
    names to keep instead, replacing that default). The model is then marked as PEFT expects of a quantized model
    (``is_loaded_in_4bit``/``8bit``) and prepared for k-bit training: every non-quantized floating parameter in
    fp32 and frozen, inputs of the first block requiring grad, and with ``gradient_checkpointing=True`` timm's
    ``set_grad_checkpointing`` / transformers' ``activation_checkpointing_enable`` (``gradient_checkpointing_enable``
    before 5.25).

    Bad input (bits, quant_type, device, an already quantized model, nothing to quantize, checkpointing on a model
    without a switch) raises :class:`QuantizationError` before anything is changed.
    """
    chosen = preflight(model, bits, quant_type, skip, gradient_checkpointing)
    device = _device(model)
    enable_checkpointing = _checkpointing_switch(model) if gradient_checkpointing else None
    for name in chosen.layers:
        linear = _module(model, name)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = quantized_linear(linear.weight, linear.bias, bits, quant_type, double_quant, compute_dtype, device,
                                 int8_threshold)
        setattr(parent, child, layer.train(linear.training))  # an eval-mode model stays in eval mode
    _prepare_for_kbit_training(model)
    setattr(model, "is_loaded_in_4bit" if bits == 4 else "is_loaded_in_8bit", True)
    # Recorded so a saved adapter can say how its base was quantized and load_adapter can redo it.
    model.__dict__[QUANTIZATION_RECORD] = {
        "bits": bits, "quant_type": quant_type if bits == 4 else None,
        "double_quant": double_quant if bits == 4 else None,
        "compute_dtype": str(compute_dtype).removeprefix("torch."), "skip": None if skip is None else list(skip),
        "int8_threshold": int8_threshold if bits == 8 else None,
    }
    if enable_checkpointing is not None:
        enable_checkpointing()
    return model


def preflight(model: nn.Module, bits: int = 4, quant_type: str = "nf4", skip: Iterable[str] | None = None,
              gradient_checkpointing: bool = False, **_: object) -> QuantizationPlan:
    """Every check :func:`quantize` makes before it changes anything (reads the model only); its plan.

    Extra keyword arguments (quantize's other options) are accepted and ignored, so callers can pass theirs through.
    """
    if bits == 4 and quant_type not in ("nf4", "fp4"):
        raise QuantizationError(f"quant_type must be 'nf4' or 'fp4' for 4-bit; got {quant_type!r}.")
    chosen = plan(model, bits, skip)
    _device(model)
    if gradient_checkpointing:
        _checkpointing_switch(model)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise QuantizationError("quantize() needs bitsandbytes: pip install bitsandbytes") from error
    return chosen


def _checkpointing_switch(model: nn.Module) -> object:
    if hasattr(model, "set_grad_checkpointing"):  # timm
        return lambda: model.set_grad_checkpointing(True)
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.25 (the old name warns there)
        return lambda: model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "gradient_checkpointing_enable"):  # transformers
        return lambda: model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    raise QuantizationError(f"{type(model).__name__} has no gradient-checkpointing switch (timm models have "
                            "set_grad_checkpointing, transformers models gradient_checkpointing_enable); "
                            "call quantize(..., gradient_checkpointing=False).")


def _prepare_for_kbit_training(model: nn.Module) -> None:
    # PEFT's prepare_model_for_kbit_training does the same for transformers models only: frozen base, fp32 for
    # everything that is not quantized (norms, head, embeddings: their gradients and the adapters' inputs need
    # full precision), and input gradients so that checkpointed blocks with frozen weights still backpropagate.
    for parameter in model.parameters():
        parameter.requires_grad_(False)
        if parameter.is_floating_point() and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    embedding = _input_module(model)
    if embedding is not None:
        embedding.register_forward_hook(_outputs_require_grad)


def _input_module(model: nn.Module) -> nn.Module | None:
    """The patch embedding: timm ``patch_embed``, torchvision ``conv_proj``, transformers' input embeddings."""
    for attribute in ("patch_embed", "conv_proj"):
        if isinstance(getattr(model, attribute, None), nn.Module):
            return getattr(model, attribute)
    try:
        return model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None


def _outputs_require_grad(module: nn.Module, inputs: tuple, output: object) -> None:
    # transformers' enable_input_require_grads does this for a tensor output only; Swin's embeddings return a tuple.
    # Only where gradients are recorded: a no-grad (inference) forward has nothing to backpropagate.
    first = output[0] if isinstance(output, (tuple, list)) else output
    if (torch.is_grad_enabled() and isinstance(first, torch.Tensor) and first.is_floating_point()
            and not first.requires_grad):
        first.requires_grad_(True)

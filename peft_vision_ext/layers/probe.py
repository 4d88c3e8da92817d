"""One eval-mode forward with read-only hooks: which targeted layers the model really calls, and how.

Two questions need it. Is a targeted layer called at all? A parent that computes ``F.linear(x, layer.weight, ...)``
itself (timm BEiT/EVA, torchvision Swin) never calls the layer, so a PEFT wrapper there would never act (the plugin
routes such calls, see :mod:`peft_vision_ext.routing`); a layer neither called nor read would be dead weight and is
refused. And which Linear layers see channels-last 4-D input (the matrix rows ``linear`` and ``linear-4d`` differ
for OFT). Nothing is written to the model (eval mode and no_grad, so BatchNorm statistics stay; training flags are
restored; hooks are removed).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..routing import linear_arguments
from .cpu_packing import repack_held_off
from .kinds import LayerKind, base_layer, layer_kind

logger = logging.getLogger("peft_vision_ext")


def _sizes(model: nn.Module) -> list[tuple[int, int, int]]:
    """Candidate (channels, height, width) inputs, most specific first. A model that says nothing of its input
    size (the user's own module around a timm/transformers/torchvision model) gets the first size a module inside
    it gives."""
    sizes = _own_sizes(model) or next((found for module in model.modules()
                                       if module is not model and (found := _own_sizes(module))), [])
    return list(dict.fromkeys([*sizes, (3, 224, 224)]))


def _own_sizes(model: nn.Module) -> list[tuple[int, int, int]]:
    sizes = []
    patch_embed = getattr(model, "patch_embed", None)  # timm ViTs built with img_size=...: the real size
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is not None:
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        sizes.append((getattr(patch_embed.proj, "in_channels", 3) if hasattr(patch_embed, "proj") else 3, *size))
    timm_cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(timm_cfg, dict) and "input_size" in timm_cfg:
        sizes.append(tuple(timm_cfg["input_size"]))
    hf_config = getattr(model, "config", None)
    for config in (hf_config, getattr(hf_config, "vision_config", None)):  # dual encoders, SAM: the vision tower's
        size = getattr(config, "image_size", None) or getattr(config, "crop_size", None)  # crop_size: V-JEPA 2
        if config is not None and isinstance(size, (int, list, tuple)):
            height, width = (size, size) if isinstance(size, int) else tuple(size)[-2:]
            sizes.append((getattr(config, "num_channels", 3), height, width))
    if isinstance(getattr(model, "image_size", None), int):  # torchvision VisionTransformer
        sizes.append((3, model.image_size, model.image_size))
    return sizes


def takes_images(model: nn.Module) -> bool:
    """Whether ``model`` says it takes images: it (or a module inside it) declares an input size, or it defines
    ``example_input()``. A model that says neither may not be a vision model at all (a text model, a toy MLP): that
    the probe could not run it then tells nothing."""
    return callable(getattr(model, "example_input", None)) or any(_own_sizes(module) for module in model.modules())


Example = torch.Tensor | dict[str, torch.Tensor]


def example_inputs(model: nn.Module) -> list[Example]:
    """One-image batches of the sizes the model may expect: the model's own ``example_input()`` when it defines
    one (custom models can), then timm, transformers and torchvision conventions. transformers video models get a
    clip of ``config.num_frames`` (V-JEPA 2: ``frames_per_clip``) frames; models that also read text (dual
    encoders, OWL-ViT, Grounding DINO) get a few token ids beside the pixels (keyword arguments)."""
    custom = getattr(model, "example_input", None)
    if callable(custom):
        return [custom()]
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    device = parameter.device if parameter is not None else "cpu"
    config = getattr(model, "config", None)
    frames = getattr(config, "num_frames", None) or getattr(config, "frames_per_clip", None)  # V-JEPA 2
    if isinstance(frames, int) and _forward_takes(model, "pixel_values_videos"):  # V-JEPA 2's keyword for clips
        return [{"pixel_values_videos": torch.zeros(1, frames, *size, dtype=dtype, device=device)}
                for size in _sizes(model)]
    lead = (1, frames) if isinstance(frames, int) and _forward_takes(model, "pixel_values") else (1,)
    images = [torch.zeros(*lead, *size, dtype=dtype, device=device) for size in _sizes(model)]
    if _forward_takes(model, "input_ids") and _forward_takes(model, "pixel_values"):
        ids = torch.full((1, 4), 5, dtype=torch.long, device=device)
        return [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": image} for image in images]
    return images


def _forward_takes(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Observation:
    """What one forward showed about some modules of a model."""
    ran: bool  # False: no example input ran the model; nothing below is known
    ndims: dict[str, int] = field(default_factory=dict)  # path -> input dimensions, for modules that were called
    weight_reads: dict[str, str] = field(default_factory=dict)  # path -> parent class, for modules never called
    # whose weight their parent passed to F.linear itself (timm BEiT/EVA qkv, torchvision Swin qkv/proj)
    training_only: tuple[str, ...] = ()  # called in training mode only (auxiliary heads)

    def never_called(self, names: list[str]) -> list[str]:
        """Modules neither called nor read by F.linear (empty when the model did not run)."""
        return [n for n in names if self.ran and n not in self.ndims and n not in self.weight_reads]


class _LinearWeights(TorchFunctionMode):
    """Records the weights F.linear is called with (read-only)."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: set[int] = set()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            self.weights.add(id(linear_arguments(args, kwargs)[1]))
        return func(*args, **kwargs)


def observe(model: nn.Module, names: list[str]) -> Observation:
    """One eval-mode, no-grad forward with read-only hooks: which of ``names`` are called (and with how many input
    dimensions), and which are never called but have their weight passed to ``F.linear`` by their parent. Modules
    the eval forward skips get a second, training-mode forward (auxiliary heads run only in training), unless the
    model holds bitsandbytes 8-bit layers, whose state a training-mode forward changes.

    Nothing is written to the model: training flags are restored, hooks removed, buffers (BatchNorm statistics) and
    the random number generators put back after the training-mode forward, and bitsandbytes' in-place CPU repack of
    4-bit weights is held off.
    """
    modules = dict(model.named_modules())
    seen: dict[str, int] = {}
    handles = []
    for name in names:
        def record(module: nn.Module, args: tuple, name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor):
                seen.setdefault(name, args[0].dim())
            else:
                seen.setdefault(name, 0)
        handles.append(modules[name].register_forward_pre_hook(record))
    training = {name: module.training for name, module in model.named_modules()}
    linear_weights = _LinearWeights()
    ran = None
    training_only: tuple[str, ...] = ()

    def forward(example: Example) -> None:
        with torch.no_grad(), repack_held_off(model), linear_weights:
            model(**example) if isinstance(example, dict) else model(example)

    try:
        model.eval()
        for example in example_inputs(model):
            try:
                forward(example)
                ran = example
                break
            except Exception as error:  # noqa: BLE001 - try the next size; callers treat "did not run" as unknown
                seen.clear()
                linear_weights.weights.clear()
                logger.info("peft-vision-ext: could not run %s on %s (%s)", type(model).__name__,
                            {k: tuple(v.shape) for k, v in example.items()} if isinstance(example, dict)
                            else tuple(example.shape), error)
        skipped = [n for n in names if n not in seen and id(getattr(base_layer(modules[n]), "weight", None))
                   not in linear_weights.weights]
        if ran is not None and skipped and not any(layer_kind(m) is LayerKind.BNB_8BIT for m in modules.values()):
            before = set(seen)
            buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
            devices = sorted({b.device.index for b, _ in buffers if b.device.type == "cuda"})
            try:
                with torch.random.fork_rng(devices=devices):
                    model.train()
                    forward(ran)
            except Exception as error:  # noqa: BLE001 - then they stay "never called in eval mode"
                logger.info("peft-vision-ext: training-mode probe of %s failed (%s)", type(model).__name__, error)
            finally:
                with torch.no_grad():
                    for buffer, saved in buffers:
                        buffer.copy_(saved)
            training_only = tuple(n for n in skipped if n in seen and n not in before)
    finally:
        for handle in handles:
            handle.remove()
        for name, module in model.named_modules():
            module.training = training.get(name, module.training)
    reads = {}
    for name in names:
        weight = getattr(base_layer(modules[name]), "weight", None)
        if ran is not None and name not in seen and weight is not None and id(weight) in linear_weights.weights:
            parent = name.rpartition(".")[0]
            reads[name] = type(modules[parent]).__name__ if parent in modules else type(model).__name__
    return Observation(ran is not None, seen, reads, training_only)


def input_ndims(model: nn.Module, names: list[str]) -> dict[str, int]:
    """Number of input dimensions each named module sees in one forward ({} when the model cannot be run)."""
    return observe(model, names).ndims

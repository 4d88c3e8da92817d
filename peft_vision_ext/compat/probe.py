"""Which Linear layers see channels-last 4-D input: one eval-mode forward with read-only hooks.

Only the matrix rows that differ between ``linear`` and ``linear-4d`` (OFT) need this; nothing is written to the
model (eval mode and no_grad, so BatchNorm statistics stay; training flags are restored; hooks are removed).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger("peft_vision_ext")


def _sizes(model: nn.Module) -> list[tuple[int, int, int]]:
    """Candidate (channels, height, width) inputs, most specific first."""
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
    if hf_config is not None and hasattr(hf_config, "image_size"):
        size = hf_config.image_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)[-2:]
        sizes.append((getattr(hf_config, "num_channels", 3), height, width))
    if isinstance(getattr(model, "image_size", None), int):  # torchvision VisionTransformer
        sizes.append((3, model.image_size, model.image_size))
    sizes.append((3, 224, 224))
    return list(dict.fromkeys(sizes))


def example_inputs(model: nn.Module) -> list[torch.Tensor]:
    """One-image batches of the sizes the model may expect: the model's own ``example_input()`` when it defines
    one (custom models can), then timm, transformers and torchvision conventions."""
    custom = getattr(model, "example_input", None)
    if callable(custom):
        return [custom()]
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    device = parameter.device if parameter is not None else "cpu"
    return [torch.zeros(1, *size, dtype=dtype, device=device) for size in _sizes(model)]


def input_ndims(model: nn.Module, names: list[str]) -> dict[str, int]:
    """Number of input dimensions each named module sees in one forward ({} when the model cannot be run)."""
    modules = dict(model.named_modules())
    seen: dict[str, int] = {}
    handles = []
    for name in names:
        def record(module: nn.Module, args: tuple, name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor):
                seen.setdefault(name, args[0].dim())
        handles.append(modules[name].register_forward_pre_hook(record))
    training = {name: module.training for name, module in model.named_modules()}
    try:
        model.eval()
        for example in example_inputs(model):
            try:
                with torch.no_grad():
                    model(example)
                break
            except Exception as error:  # noqa: BLE001 - try the next size; the caller falls back to "linear"
                seen.clear()
                logger.info("peft-vision-ext: could not run %s on %s (%s)", type(model).__name__,
                            tuple(example.shape), error)
    finally:
        for handle in handles:
            handle.remove()
        for name, module in model.named_modules():
            module.training = training.get(name, module.training)
    return seen

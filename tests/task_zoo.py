"""Tiny random-init task models (detection, segmentation, keypoints, ...), one per task family, with a loss.

Each case: (family, builder, loss) where ``loss(model)`` runs one training forward on fixed random data and returns
a scalar whose backward reaches every trained part. torchvision detectors are the real builders at a small input
size (the architecture a user gets, so ``load_adapter`` can rebuild them); transformers models come from
``task_zoo_hf``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

NUM_CLASSES = 3
_DETECTOR_KW = dict(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
_SMALL = dict(min_size=64, max_size=64, rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=16,
              rpn_pre_nms_top_n_test=64, rpn_post_nms_top_n_test=16, rpn_batch_size_per_image=32,
              box_batch_size_per_image=16)


def _tv(builder: str, **kwargs: object) -> Callable[..., nn.Module]:
    def build(num_classes: int = NUM_CLASSES) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(builder, **{**kwargs, "num_classes": num_classes})

    return build


def detection_targets(keypoints: int = 0, masks: bool = False, size: int = 64) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(2):
        xy = torch.randint(0, size // 2, (2, 2), generator=generator).float()
        boxes = torch.cat([xy, xy + torch.randint(8, size // 2, (2, 2), generator=generator).float()], dim=1)
        target = {"boxes": boxes, "labels": torch.tensor([1, 2])}
        if masks:
            target["masks"] = torch.zeros(2, size, size, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
                target["masks"][i, y0:y1, x0:x1] = 1
        if keypoints:
            points = torch.rand(2, keypoints, 2, generator=generator) * (boxes[:, None, 2:] - boxes[:, None, :2])
            target["keypoints"] = torch.cat([points + boxes[:, None, :2], torch.ones(2, keypoints, 1)], dim=2)
        targets.append(target)
    return targets


def _detection_loss(keypoints: int = 0, masks: bool = False, size: int = 64) -> Callable[[nn.Module], torch.Tensor]:
    def loss(model: nn.Module) -> torch.Tensor:
        images = list(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)))
        return sum(model(images, detection_targets(keypoints, masks, size)).values())

    return loss


def _segmentation_loss(model: nn.Module) -> torch.Tensor:
    output = model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    return sum(value.float().pow(2).mean() for value in output.values())


def _resnet18_fpn(returned_layers: list[int] | None = None, extra_blocks: nn.Module | None = None) -> nn.Module:
    """A ResNet-18 FPN backbone: the detectors' own classes at a third of ResNet-50's cost (tests stay fast)."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    return resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                               returned_layers=returned_layers, extra_blocks=extra_blocks)


def _detector(class_name: str, small: dict, **kwargs: object) -> Callable[..., nn.Module]:
    """torchvision's ``class_name`` detector (MaskRCNN, KeypointRCNN, RetinaNet, FCOS) on a ResNet-18 FPN."""
    def build(num_classes: int = NUM_CLASSES) -> nn.Module:
        import torchvision.models.detection as detection
        from torchvision.ops.feature_pyramid_network import LastLevelP6P7

        dense = class_name in ("RetinaNet", "FCOS")
        backbone = _resnet18_fpn([2, 3, 4], LastLevelP6P7(256, 256)) if dense else _resnet18_fpn()
        if class_name == "KeypointRCNN":  # the keypoint count follows the class count, so that a test varying the
            kwargs["num_keypoints"] = num_classes + 2  # classes also finds the keypoint predictor
        return getattr(detection, class_name)(backbone, num_classes=num_classes, **small, **kwargs)

    return build


#: case id -> (family, builder(num_classes), loss); the first case of a family is the one tested with every method
TV_TASK_ZOO: dict[str, tuple[str, Callable[..., nn.Module], Callable[[nn.Module], torch.Tensor]]] = {
    "fasterrcnn_mobilenet_v3_large_fpn": ("tv-faster-rcnn", _tv("fasterrcnn_mobilenet_v3_large_fpn", **_DETECTOR_KW,
                                                              **_SMALL), _detection_loss()),
    "maskrcnn_resnet18_fpn": ("tv-mask-rcnn", _detector("MaskRCNN", _SMALL), _detection_loss(masks=True)),
    "keypointrcnn_resnet18_fpn": ("tv-keypoint-rcnn", _detector("KeypointRCNN", _SMALL),
                                  _detection_loss(keypoints=5)),
    "retinanet_resnet18_fpn": ("tv-retinanet", _detector("RetinaNet", dict(min_size=64, max_size=64)),
                               _detection_loss()),
    "fcos_resnet18_fpn": ("tv-fcos", _detector("FCOS", dict(min_size=64, max_size=64)), _detection_loss()),
    "ssdlite320_mobilenet_v3_large": ("tv-ssd", _tv("ssdlite320_mobilenet_v3_large", **_DETECTOR_KW),
                                      _detection_loss(size=320)),
    "deeplabv3_mobilenet_v3_large": ("tv-fcn-deeplab", _tv("deeplabv3_mobilenet_v3_large", **_DETECTOR_KW,
                                                           aux_loss=True), _segmentation_loss),
    "fcn_resnet50": ("tv-fcn-deeplab", _tv("fcn_resnet50", **_DETECTOR_KW, aux_loss=True), _segmentation_loss),
    "lraspp_mobilenet_v3_large": ("tv-lraspp", _tv("lraspp_mobilenet_v3_large", **_DETECTOR_KW), _segmentation_loss),
}


def _output_loss(output: object) -> torch.Tensor:
    """Sum of the means of every float tensor a transformers task model returns (class logits, boxes, masks, depth,
    embeddings), so that every head that produces an output gets a gradient."""
    values = output.values() if hasattr(output, "values") else [output]
    tensors = [v for value in values for v in (value if isinstance(value, (list, tuple)) else [value])]
    return sum(t[torch.isfinite(t)].float().mean() for t in tensors  # Grounding DINO masks text logits with -inf
               if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad)


def _hf_case(case: str) -> tuple[Callable[..., nn.Module], Callable[[nn.Module], torch.Tensor]]:
    from task_zoo_hf import HF_TASK_ZOO

    build, inputs = HF_TASK_ZOO[case]

    def loss(model: nn.Module) -> torch.Tensor:
        return _output_loss(model(**inputs(model)))

    return (lambda num_classes=NUM_CLASSES: build(num_labels=num_classes)), loss


_HF_FAMILIES = {
    "detr": "hf-detr", "table-transformer": "hf-detr", "conditional-detr": "hf-conditional-detr",
    "dab-detr": "hf-dab-detr", "deformable-detr-box-refine": "hf-deformable-detr",  # tied heads first: the
    "deformable-detr": "hf-deformable-detr", "deformable-detr-two-stage": "hf-deformable-detr",  # family's case
    "rt-detr-v2": "hf-rt-detr", "rt-detr": "hf-rt-detr", "d-fine": "hf-rt-detr",  # for every method
    "yolos": "hf-yolos",
    "owlvit": "hf-owlvit", "owlv2": "hf-owlvit", "grounding-dino": "hf-grounding-dino", "maskformer": "hf-maskformer",
    "mask2former": "hf-maskformer", "oneformer": "hf-maskformer", "dpt-depth": "hf-dpt",
    "depth-anything": "hf-depth-anything", "glpn": "hf-glpn", "zoedepth": "hf-zoedepth", "clip": "hf-clip-vision",
    "siglip": "hf-clip-vision", "siglip2": "hf-clip-vision", "vitmae": "hf-vitmae", "videomae": "hf-video",
    "timesformer": "hf-video", "vivit": "hf-video", "sam": "hf-sam", "lw-detr": "hf-lw-detr",
    "detr-segmentation": "hf-detr", "eomt": "hf-eomt", "vjepa2": "hf-vjepa2-video", "blip": "hf-clip-vision",
    "blip-2-retrieval": "hf-blip-2-retrieval",
}
HF_TASK_CASES = {case: (family, *_hf_case(case)) for case, family in _HF_FAMILIES.items()}


def _recipe_fcos(num_classes: int = NUM_CLASSES) -> nn.Module:
    from peft_vision_ext.detection import fcos_mobilenet_v2

    return fcos_mobilenet_v2(num_classes, image_size=64, pretrained=False)


#: our own recipes (peft_vision_ext.detection): only the backbone is pretrained, so FPN and head are trained in full
RECIPE_TASK_ZOO = {"pve-fcos_mobilenet_v2": ("pve-fcos-mobilenet-v2", _recipe_fcos, _detection_loss())}

#: every task case: torchvision, transformers and our recipes
TASK_ZOO = {**TV_TASK_ZOO, **{f"hf-{case}": value for case, value in HF_TASK_CASES.items()}, **RECIPE_TASK_ZOO}

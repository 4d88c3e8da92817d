"""Task families: detection, instance/semantic segmentation, keypoints (torchvision; transformers below).

Each entry says where the parts of the model are (backbone, neck, transformer, heads), which prediction heads a
user re-initialises for new classes (trained in full via ``modules_to_save``), the Hub task, and in ``why`` one line
for the README on what the default adapts. Everything here is data; :mod:`.families` does the matching.
"""

from __future__ import annotations

from .families import VisionFamily, register_family
from .roles import Part

_PRETRAINED = dict.fromkeys(("lora", "adalora", "loha", "lokr", "ia3"), "pretrained")

# torchvision detection: backbone.body is the backbone, backbone.fpn the neck; RPN and RoI heads are pretrained
# (COCO weights) and class-agnostic up to the predictors.
_FPN = (r"^backbone\.fpn(\.|$)", Part.NECK)
_RCNN_PARTS = (_FPN, (r"^(rpn|roi_heads)(\.|$)", Part.HEADS))
_DENSE_PARTS = (_FPN, (r"^head(\.|$)", Part.HEADS))
_WHY_RCNN = ("COCO weights cover backbone, FPN, RPN and RoI towers: all adapted (convs, box-head Linear layers); "
             "the class-specific predictors are new and trained in full")
_WHY_DENSE = ("backbone, FPN and the shared head towers are pretrained and adapted; the classification logits "
              "conv has one output per class and is trained in full")
_WHY_SEG = ("backbone and the head's pretrained convs (ASPP, 3x3) are adapted; the final 1x1 classifier convs "
            "(main and auxiliary) are trained in full")

for _entry in (
    VisionFamily("tv-faster-rcnn", "torchvision", "cnn", ("FasterRCNN",), task="object-detection",
                 description="Faster R-CNN (ResNet-50 FPN v1/v2, MobileNetV3 FPN)", defaults=_PRETRAINED,
                 parts=_RCNN_PARTS, heads=(r"roi_heads\.box_predictor",), why=_WHY_RCNN),
    VisionFamily("tv-mask-rcnn", "torchvision", "cnn", ("MaskRCNN",), task="image-segmentation",
                 description="Mask R-CNN (ResNet-50 FPN v1/v2)", defaults=_PRETRAINED, parts=_RCNN_PARTS,
                 heads=(r"roi_heads\.box_predictor", r"roi_heads\.mask_predictor"), why=_WHY_RCNN),
    VisionFamily("tv-keypoint-rcnn", "torchvision", "cnn", ("KeypointRCNN",), task="keypoint-detection",
                 description="Keypoint R-CNN (ResNet-50 FPN)", defaults=_PRETRAINED, parts=_RCNN_PARTS,
                 heads=(r"roi_heads\.box_predictor", r"roi_heads\.keypoint_predictor"), why=_WHY_RCNN),
    VisionFamily("tv-retinanet", "torchvision", "cnn", ("RetinaNet",), task="object-detection",
                 description="RetinaNet (ResNet-50 FPN v1/v2)", defaults=_PRETRAINED, parts=_DENSE_PARTS,
                 heads=(r"head\.classification_head\.cls_logits",), why=_WHY_DENSE),
    VisionFamily("tv-fcos", "torchvision", "cnn", ("FCOS",), task="object-detection",
                 description="FCOS (ResNet-50 FPN)", defaults=_PRETRAINED, parts=_DENSE_PARTS,
                 heads=(r"head\.classification_head\.cls_logits",), why=_WHY_DENSE),
    # SSD's extra feature layers are new in the detector (a neck); every level has its own class conv.
    VisionFamily("tv-ssd", "torchvision", "cnn", ("SSD",), task="object-detection",
                 description="SSD300 (VGG-16), SSDlite320 (MobileNetV3)", defaults=_PRETRAINED,
                 parts=((r"^backbone\.extra(\.|$)", Part.NECK), (r"^head(\.|$)", Part.HEADS)),
                 heads=(r"head\.classification_head",),
                 why="backbone, extra layers and box-regression convs are adapted; the per-level classification "
                     "convs (one output per anchor and class) are trained in full"),
    VisionFamily("tv-fcn-deeplab", "torchvision", "cnn", ("FCN", "DeepLabV3"), task="image-segmentation",
                 description="FCN (ResNet), DeepLabV3 (ResNet, MobileNetV3)", defaults=_PRETRAINED,
                 parts=((r"^(classifier|aux_classifier)(\.|$)", Part.HEADS),),
                 heads=(r"classifier\.4", r"aux_classifier\.4"), why=_WHY_SEG),
    VisionFamily("tv-lraspp", "torchvision", "cnn", ("LRASPP",), task="image-segmentation",
                 description="LR-ASPP (MobileNetV3)", defaults=_PRETRAINED,
                 parts=((r"^classifier(\.|$)", Part.HEADS),),
                 heads=(r"classifier\.low_classifier", r"classifier\.high_classifier"),
                 why="backbone and the head's pretrained 1x1 convs are adapted; the low and high classifier convs "
                     "are trained in full"),
):
    register_family(_entry)

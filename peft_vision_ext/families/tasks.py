"""Task families: detection, instance/semantic segmentation, keypoints (torchvision; transformers below).

Each entry says where the parts of the model are (backbone, neck, transformer, heads), which prediction heads a
user re-initialises for new classes (trained in full via ``modules_to_save``), the Hub task, and in ``why`` one line
for the docs' task table on what the default adapts. Everything here is data; :mod:`.families` does the matching.
"""

from __future__ import annotations

import re

from .registry import VisionFamily, families, register_family
from .roles import Part, Role

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
    # peft_vision_ext.detection.fcos_mobilenet_v2: only the backbone is pretrained (ImageNet), so the whole FPN and
    # FCOS head are new parts, trained in full; the adapters go on the backbone alone.
    VisionFamily("pve-fcos-mobilenet-v2", "any", "cnn", ("MobileNetV2FCOS",), task="object-detection",
                 description="FCOS on the ImageNet MobileNetV2 (peft_vision_ext.detection.fcos_mobilenet_v2)",
                 defaults=dict.fromkeys(("lora", "adalora", "loha", "lokr", "ia3"), "backbone"), parts=_DENSE_PARTS,
                 heads=(r"backbone\.fpn", r"head"),
                 why="only the backbone is pretrained (ImageNet): its groups == 1 convs are adapted; the new FPN and "
                     "FCOS head are trained in full"),
):
    register_family(_entry)


# transformers task models. Paths hold on transformers 4.57 and 5.x (5.x renamed leaves, not these prefixes; RT-DETR's
# AIFI encoder is model.encoder.encoder on 4.57, model.encoder.aifi on 5.x).
# DetrForSegmentation holds a DetrForObjectDetection under `detr.`; its mask head and box attention are pretrained
# (COCO panoptic) and class-agnostic.
_DETR = r"^((detr|conditional_detr)\.)?"
_DETR_PARTS = ((_DETR + r"model\.(input_projection|input_proj)(\.|$)", Part.NECK),
               (_DETR + r"model\.(encoder|enc_output|enc_output_norm|pos_trans)(\.|$)", Part.ENCODER),
               (_DETR + r"model\.decoder(\.|$)", Part.DECODER), (r"^(mask_head|bbox_attention)(\.|$)", Part.HEADS))
_DETR_HEADS = (r"((detr|conditional_detr)\.)?class_labels_classifier", r"((detr|conditional_detr)\.)?bbox_predictor")
# DEIMv2 keeps its input projections inside model.conv_encoder; PP-DocLayout v2-v4 add pretrained reading-order
# heads (v2: a LayoutLM-style `reading_order` model; v3: order head and global pointer beside the decoder).
_RT_DETR_PARTS = ((r"^model\.encoder\.(aifi|encoder)(\.|$)", Part.ENCODER),
                  (r"^model\.(encoder_input_proj|encoder|decoder_input_proj|conv_encoder\.encoder_input_proj)(\.|$)",
                   Part.NECK),
                  (r"^model\.(enc_output|enc_score_head|enc_bbox_head|denoising_class_embed)(\.|$)", Part.ENCODER),
                  (r"^model\.(decoder|decoder_norm)(\.|$)", Part.DECODER),
                  (r"^(reading_order|model\.(decoder_order_head|decoder_global_pointer|mask_query_head))(\.|$)",
                   Part.HEADS))
# LW-DETR / RF-DETR (a ViT or DINOv2 backbone, a multi-scale projector, a deformable decoder, one two-stage proposal
# head per query group); RfDetrForInstanceSegmentation wraps the detector under `model.` and adds a mask head.
_LW = r"^(model\.)?model\."
_LW_DETR_PARTS = ((_LW + r"backbone\.projector(\.|$)", Part.NECK),
                  (_LW + r"(enc_output|enc_output_norm)(\.|$)", Part.ENCODER), (_LW + r"decoder(\.|$)", Part.DECODER),
                  (r"^(blocks|spatial_features_proj|query_features_block|query_features_proj)(\.|$)", Part.HEADS))
_WHY_DETR = ("q/v of the transformer encoder and decoder (the CNN backbone stays frozen: `backbone` or `pretrained` "
             "adapt it); class logits and box MLP trained in full")
_WHY_DEFORMABLE = ("q/v of the encoder/decoder (deformable attention: value projections); the per-layer class and box "
                   "heads are trained in full and kept tied where the model ties them")
# 4.57's Conditional DETR keeps its decoder projections outside the attention module (sa_qcontent_proj, ...).
# DetrForSegmentation's box attention map convolves the features with k_proj.weight; it never calls k_proj.
_DETR_OVERRIDES = ((r"^bbox_attention\.k_proj$", Role.UNCALLED),)
_CONDITIONAL_OVERRIDES = ((r"\.(sa|ca)_(qcontent|qpos|qpos_sine)_proj$", Role.Q),
                          (r"\.(sa|ca)_(kcontent|kpos)_proj$", Role.K), (r"\.(sa|ca)_v_proj$", Role.V),
                          *_DETR_OVERRIDES)
_SEG_PARTS = ((r"^model\.pixel_level_module\.decoder(\.|$)", Part.NECK),
              (r"^model\.transformer_module\.(input_projection|input_projections)(\.|$)", Part.NECK),
              (r"^model\.transformer_module(\.|$)", Part.DECODER), (r"^model\.task_encoder(\.|$)", Part.ENCODER),
              (r"^mask_embedder(\.|$)", Part.HEADS))
_DEPTH_PARTS = ((r"^(neck|decoder)(\.|$)", Part.NECK), (r"^(head|relative_head|metric_head)(\.|$)", Part.HEADS))
_TEXT = r"(^|\.)(text_model|text_projection|text_backbone)(\.|$)"

for _entry in (
    VisionFamily("hf-detr", "transformers", "transformer", model_types=("detr", "table-transformer"),
                 task="object-detection", description="DETR, Table Transformer (detection, panoptic segmentation)",
                 parts=_DETR_PARTS, overrides=_DETR_OVERRIDES, heads=_DETR_HEADS, why=_WHY_DETR),
    VisionFamily("hf-conditional-detr", "transformers", "transformer", model_types=("conditional_detr",),
                 task="object-detection", description="Conditional DETR", parts=_DETR_PARTS,
                 overrides=_CONDITIONAL_OVERRIDES, heads=_DETR_HEADS,
                 why=_WHY_DETR),
    VisionFamily("hf-dab-detr", "transformers", "transformer", model_types=("dab-detr",), task="object-detection",
                 description="DAB-DETR", parts=_DETR_PARTS, heads=(r"class_embed", r"bbox_predictor"),
                 why=_WHY_DETR),
    VisionFamily("hf-deformable-detr", "transformers", "transformer", model_types=("deformable_detr",),
                 task="object-detection", description="Deformable DETR (plain, box refinement, two-stage)",
                 parts=_DETR_PARTS, heads=(r"(model\.decoder\.)?(class|bbox)_embed\.\d+",), why=_WHY_DEFORMABLE),
    VisionFamily("hf-rt-detr", "transformers", "transformer",
                 model_types=("rt_detr", "rt_detr_v2", "d_fine", "deimv2", "pp_doclayout_v2", "pp_doclayout_v3",
                              "pp_doclayout_v4"),
                 task="object-detection", description="RT-DETR, RT-DETRv2, D-FINE, DEIMv2, PP-DocLayout v2-v4",
                 parts=_RT_DETR_PARTS,
                 heads=(r"(model\.decoder\.)?(class|bbox)_embed(\.\d+)?", r"model\.enc_(score|bbox)_head",
                        r"model\.denoising_class_embed"),
                 why="q/v of the AIFI encoder and the decoder; the hybrid encoder's convs are a neck (`backbone+neck`"
                     " adapts them); query-selection and per-layer class/box heads and the denoising class embedding "
                     "(one row per class) trained in full, ties kept"),
    VisionFamily("hf-lw-detr", "transformers", "transformer", model_types=("lw_detr", "rf_detr"),
                 task="object-detection", description="LW-DETR, RF-DETR (detection, instance segmentation)",
                 parts=_LW_DETR_PARTS,
                 heads=(r"(model\.)?(class|bbox)_embed", r"(model\.)?model\.enc_out_(class|bbox)_embed\.\d+"),
                 why="q/v of the ViT/DINOv2 backbone and the decoder; the final and per-group proposal class/box "
                     "heads trained in full; RF-DETR's mask head is pretrained (`heads` adapts it)"),
    VisionFamily("hf-yolos", "transformers", "transformer", model_types=("yolos",), task="object-detection",
                 description="YOLOS", heads=(r"class_labels_classifier", r"bbox_predictor"),
                 why="a plain ViT: q/v of every block; class and box MLPs trained in full"),
    VisionFamily("hf-owlvit", "transformers", "transformer", model_types=("owlvit", "owlv2"),
                 task="zero-shot-object-detection", description="OWL-ViT, OWLv2 (text-queried detection)",
                 parts=((_TEXT, Part.TEXT), (r"^(class_head|box_head|objectness_head)(\.|$)", Part.HEADS)), heads=(),
                 why="q/v of the image tower (towers='both' adds the text tower); classes are text queries, so no "
                     "head is re-initialised; `heads` adapts the class/box/objectness MLPs"),
    VisionFamily("hf-grounding-dino", "transformers", "transformer",
                 model_types=("grounding-dino", "mm-grounding-dino"), task="zero-shot-object-detection",
                 description="Grounding DINO, MM Grounding DINO (text-queried detection)",
                 parts=((_TEXT, Part.TEXT), (r"^model\.input_proj_vision(\.|$)", Part.NECK),
                        (r"^model\.(encoder|enc_output|enc_output_norm|encoder_output_\w+)(\.|$)", Part.ENCODER),
                        (r"^model\.decoder(\.|$)", Part.DECODER), (r"^bbox_embed(\.|$)", Part.HEADS)), heads=(),
                 why="q/v of the Swin backbone, fusion encoder and decoder (image side; towers='both' adds BERT); "
                     "classes are text tokens, so nothing is re-initialised"),
    VisionFamily("hf-maskformer", "transformers", "transformer",
                 model_types=("maskformer", "mask2former", "oneformer"), task="image-segmentation",
                 description="MaskFormer, Mask2Former, OneFormer", parts=_SEG_PARTS,
                 heads=(r"class_predictor", r"model\.transformer_module\.decoder\.class_embed"),
                 why="q/v of the backbone, pixel decoder and mask decoder; the mask-class predictor is re-initialised "
                     "and trained in full; the mask embedder is pretrained (`heads` adapts it)"),
    VisionFamily("hf-eomt", "transformers", "transformer", model_types=("eomt", "eomt_dinov3", "videomt"),
                 task="image-segmentation", description="EoMT, EoMT-DINOv3, VidEoMT (encoder-only mask transformers)",
                 parts=((r"^(upscale_block|mask_head|query_updater)(\.|$)", Part.HEADS),),
                 heads=(r"class_predictor",),
                 why="a plain ViT whose last blocks also carry the mask queries: q/v of every block; the mask-class "
                     "predictor trained in full; the upscale block and mask MLP are pretrained (`heads` adapts them)"),
    VisionFamily("hf-depth-anything", "transformers", "transformer", model_types=("depth_anything",),
                 task="depth-estimation", description="Depth Anything (v1, v2)", parts=_DEPTH_PARTS,
                 heads=(r"head",), why="q/v of the DINOv2 backbone; the small depth head trained in full, the DPT "
                                       "neck frozen (`backbone+neck` adapts its convs)"),
    VisionFamily("hf-glpn", "transformers", "transformer", model_types=("glpn",), task="depth-estimation",
                 description="GLPN", parts=_DEPTH_PARTS, heads=(r"head",),
                 why="q/v of the SegFormer-style encoder; the depth head trained in full"),
    VisionFamily("hf-zoedepth", "transformers", "transformer", model_types=("zoedepth",), task="depth-estimation",
                 description="ZoeDepth", parts=_DEPTH_PARTS, heads=(r"relative_head", r"metric_head"),
                 why="q/v of the BEiT backbone; the relative and metric (bin) heads trained in full"),
    VisionFamily("hf-vitmae", "transformers", "transformer", model_types=("vit_mae",),
                 task="image-feature-extraction", description="ViTMAE pre-training",
                 parts=((r"^decoder(\.|$)", Part.DECODER),), heads=(),
                 why="q/v of encoder and pixel decoder (continued MAE pre-training; nothing re-initialised)"),
    VisionFamily("hf-video", "transformers", "transformer", model_types=("videomae", "timesformer", "vivit"),
                 task="video-classification", description="VideoMAE, TimeSformer, ViViT (Conv3d patch embedding "
                 "left frozen)", defaults={"ia3": "mlp"},
                 why="q/v of every block (TimeSformer's fused qkv: whole); IA3 the MLP (VideoMAE on "
                     "transformers 4 computes F.linear with q/v weights and its own biases); the classifier trained "
                     "in full"),
    # VJEPA2ForVideoClassification runs the encoder and its attentive pooler only (skip_predictor=True): the
    # pretraining predictor's layers are never called, so a part of their own keeps presets off them.
    VisionFamily("hf-vjepa2-video", "transformers", "transformer", ("VJEPA2ForVideoClassification",),
                 model_types=("vjepa2",), task="video-classification",
                 description="V-JEPA 2 video classifier (predictor never called)",
                 parts=((r"^vjepa2\.predictor(\.|$)", Part.DECODER),), defaults=dict.fromkeys(_PRETRAINED, "backbone"),
                 why="q/v of the video encoder and the attentive pooler; the pretraining predictor is skipped by the "
                     "classifier's forward, so nothing there is adapted; the classifier trained in full"),
    # Blip2ForImageTextRetrieval (PEFT's blip-2 default names the language model's q/v, which it has not): the
    # Q-Former bridges image features to the text space, the part BLIP-2 itself trains.
    VisionFamily("hf-blip-2-retrieval", "transformers", "transformer", ("Blip2ForImageTextRetrieval",),
                 model_types=("blip-2",), task="zero-shot-image-classification",
                 description="BLIP-2 image-text retrieval",
                 parts=((r"^(embeddings|text_projection)(\.|$)", Part.TEXT), (r"^qformer(\.|$)", Part.NECK),
                        (r"^(vision_projection|itm_head)(\.|$)", Part.HEADS)), heads=(),
                 why="q/v of the ViT and the Q-Former (towers='both' adds the text embeddings' side); image-text "
                     "matching needs no re-initialised head"),
    VisionFamily("hf-sam", "transformers", "transformer", model_types=("sam",), task="mask-generation",
                 description="SAM", parts=((r"^vision_encoder\.neck(\.|$)", Part.NECK),
                                           (r"^prompt_encoder(\.|$)", Part.ENCODER),
                                           (r"^mask_decoder(\.|$)", Part.DECODER)), heads=(),
                 why="q/v of the image encoder and the mask decoder (`decoder` adapts the mask decoder alone); no "
                     "class head"),
):
    register_family(_entry)


def _readable(pattern: str) -> str:
    """``(model\\.decoder\\.)?(class|bbox)_embed\\.\\d+`` -> ``[model.decoder.]{class,bbox}_embed.N`` (no ``|`` in
    a Markdown table); nested groups are rewritten from the inside out."""
    text = pattern.replace(r"\d+", "N").replace(r"\.", ".")
    while True:
        rewritten = re.sub(r"\(([^()]*)\)\?", r"[\1]", text)
        rewritten = re.sub(r"\(([^()]*)\)", lambda m: "{" + m.group(1).replace("|", ",") + "}", rewritten)
        if rewritten == text:
            return text
        text = rewritten


def task_families_markdown() -> str:
    """The table of task families in docs/guides/presets.md: what each default adapts and trains in full
    (docs/generate.py writes it; tests keep the two equal)."""
    rows = ["| family | task | models | default (LoRA) | trained in full | why |", "|---|---|---|---|---|---|"]
    for family in families():
        if family.task is None:
            continue
        if family.heads is None:
            heads = "the classifier (generic head names)"
        else:
            heads = ", ".join(f"`{_readable(h)}`" for h in family.heads) or "nothing (no class head)"
        default = family.default_preset("lora") or "by structure"
        rows.append(f"| {family.name} | {family.task} | {family.description} | `{default}` | {heads} | {family.why} |")
    return "\n".join(rows)

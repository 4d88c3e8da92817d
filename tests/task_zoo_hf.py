"""Tiny random-init transformers task models: detection, universal segmentation, depth, dual encoders, MAE, video, SAM.

``HF_TASK_ZOO[case] = (build, make_inputs)``: ``build()`` returns a tiny random-init model (nothing is downloaded: CNN
backbones come from a tiny transformers ``backbone_config``, never timm / pretrained weights) and ``make_inputs(model)``
returns forward kwargs for a batch of 2. Plain inference inputs only (no ``labels``); ``task_output(model(**kwargs))``
is a float tensor that ``.mean().backward()`` works on.

Every builder takes an optional ``num_labels`` (default ``NUM_LABELS``), so a test can build a model with two class
counts and diff the parameter shapes. Cases whose classes are text queries (OWL-ViT, OWLv2, Grounding DINO) and cases
without classes (depth, dual encoders, MAE, SAM) ignore it.

Every case builds, runs forward + backward, on both lanes (transformers 5.x and 4.57), except ``NEW_LANE_ONLY``
(architectures transformers 4.57 does not have; old-lane tests skip them). ``NOT_BUILDABLE`` (case -> why it cannot be
built offline; such cases are not in the zoo) is empty, kept for cases added later.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

NUM_LABELS = 3
BATCH = 2

#: case -> why it cannot be built offline on this machine (absent from HF_TASK_ZOO)
NOT_BUILDABLE: dict[str, str] = {}

#: cases that only build on the new lane (transformers 5.x); tests on the old lane must skip them
NEW_LANE_ONLY: set[str] = {"lw-detr"}


def _tf():
    import transformers

    return transformers


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pixels(size: int = 64, batch: int = BATCH) -> Callable[[nn.Module], dict]:
    def make(model: nn.Module) -> dict:
        return {"pixel_values": torch.randn(batch, 3, size, size, generator=_gen())}

    return make


def _video(frames: int, size: int = 32) -> Callable[[nn.Module], dict]:
    def make(model: nn.Module) -> dict:
        return {"pixel_values": torch.randn(BATCH, frames, 3, size, size, generator=_gen())}

    return make


def _ids(vocab: int, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    # avoid 0..2 (pad / bos / eos-like ids in small vocabularies)
    return torch.randint(3, vocab, shape, generator=gen)


# --------------------------------------------------------------------------------------------------- tiny backbones
def _resnet(out_features: list[str]):
    return _tf().ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                              layer_type="basic", out_features=out_features)


def _swin(out_features: list[str], image_size: int = 64):
    return _tf().SwinConfig(image_size=image_size, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                            num_heads=[1, 1, 2, 2], window_size=2, out_features=out_features)


_NO_DOWNLOAD = dict(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None)
_DETR_KW = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64,
                encoder_attention_heads=2, decoder_attention_heads=2, num_queries=5)


# --------------------------------------------------------------------------------------------------- detection
def _detr_like(config_name: str, model_name: str, out_features: list[str], **kwargs):
    def build(num_labels: int = NUM_LABELS) -> nn.Module:
        tf = _tf()
        config = getattr(tf, config_name)(backbone_config=_resnet(out_features), num_labels=num_labels,
                                          **_NO_DOWNLOAD, **kwargs)
        return getattr(tf, model_name)(config)

    return build


_MULTI = ["stage2", "stage3", "stage4"]
# decoder_layers >= 2 here, in RT-DETR(v2), D-FINE and Grounding DINO: transformers 5.x ties bbox_embed.N to
# bbox_embed.0 and raises ("issue with your definition of `tie_weights_keys`") when there is a single decoder layer
_DEFORMABLE_KW = dict(_DETR_KW, decoder_layers=2, num_feature_levels=4, encoder_n_points=2, decoder_n_points=2,
                      disable_custom_kernels=True)


def _rt_detr(version: int):
    def build(num_labels: int = NUM_LABELS) -> nn.Module:
        tf = _tf()
        backbone = tf.RTDetrResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 16, 16],
                                         depths=[1, 1, 1, 1], layer_type="basic", out_features=_MULTI)
        kwargs = dict(backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
                      encoder_hidden_dim=32, encoder_in_channels=[16, 16, 16], feat_strides=[8, 16, 32],
                      encoder_layers=1, encoder_ffn_dim=64, encoder_attention_heads=2, d_model=32, num_queries=5,
                      decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64, num_feature_levels=3, decoder_n_points=2,
                      decoder_layers=2, decoder_attention_heads=2, num_denoising=0, num_labels=num_labels)
        if version == 1:
            return tf.RTDetrForObjectDetection(tf.RTDetrConfig(**kwargs))
        return tf.RTDetrV2ForObjectDetection(tf.RTDetrV2Config(decoder_n_levels=3, **kwargs))

    return build


def _d_fine(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    backbone = tf.HGNetV2Config(num_channels=3, embedding_size=8, hidden_sizes=[16, 16, 16, 16], depths=[1, 1, 1, 1],
                                stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 16, 16],
                                stage_mid_channels=[8, 8, 8, 8], stage_out_channels=[16, 16, 16, 16],
                                stage_num_blocks=[1, 1, 1, 1], stage_downsample=[False, True, True, True],
                                stage_light_block=[False, False, True, True], stage_kernel_size=[3, 3, 5, 5],
                                stage_numb_of_layers=[2, 2, 2, 2], out_features=_MULTI)
    config = tf.DFineConfig(backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
                            backbone=None, encoder_hidden_dim=32, encoder_in_channels=[16, 16, 16],
                            feat_strides=[8, 16, 32], encoder_layers=1, encoder_ffn_dim=64, encoder_attention_heads=2,
                            d_model=32, num_queries=5, decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64,
                            num_feature_levels=3, decoder_n_points=[2, 2, 2], decoder_layers=2,
                            decoder_attention_heads=2, num_denoising=0, hidden_expansion=0.5, depth_mult=0.34,
                            lqe_hidden_dim=16, max_num_bins=8, num_labels=num_labels)
    return tf.DFineForObjectDetection(config)


def _lw_detr(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    vit = tf.LwDetrViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=64,
                             pretrain_image_size=64, patch_size=8, window_block_indices=[0], out_indices=[1, 2],
                             num_windows=4)
    config = tf.LwDetrConfig(backbone_config=vit, projector_scale_factors=[1.0], c2f_num_blocks=1, d_model=32,
                             decoder_ffn_dim=64, decoder_n_points=2, decoder_layers=2, decoder_self_attention_heads=2,
                             decoder_cross_attention_heads=2, num_queries=5, group_detr=2, num_labels=num_labels)
    return tf.LwDetrForObjectDetection(config)


def _detr_segmentation(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    # the mask head's GroupNorm(8, .) needs d_model / 16 and d_model + heads divisible by 8; it reads four stages
    config = tf.DetrConfig(backbone_config=_resnet(["stage1", "stage2", "stage3", "stage4"]), num_labels=num_labels,
                           **_NO_DOWNLOAD, **dict(_DETR_KW, d_model=64, encoder_attention_heads=8,
                                                  decoder_attention_heads=8))
    return tf.DetrForSegmentation(config)


def _yolos(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    config = tf.YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            image_size=[64, 64], patch_size=16, num_detection_tokens=5, num_labels=num_labels)
    return tf.YolosForObjectDetection(config)


_TEXT_KW = dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=16)
_VISION_KW = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)


def _owl(config_name: str, model_name: str):
    def build(num_labels: int = NUM_LABELS) -> nn.Module:  # classes are text queries: num_labels is unused
        tf = _tf()
        config = getattr(tf, config_name)(text_config=dict(_TEXT_KW), vision_config=dict(_VISION_KW),
                                          projection_dim=32)
        return getattr(tf, model_name)(config)

    return build


def _text_and_pixels(seq: int = 7, queries: int = 1, size: int = 32) -> Callable[[nn.Module], dict]:
    """input_ids of shape (BATCH * queries, seq) + pixel_values (BATCH, 3, size, size)."""

    def make(model: nn.Module) -> dict:
        gen = _gen()
        vocab = model.config.text_config.vocab_size
        return {"input_ids": _ids(vocab, (BATCH * queries, seq), gen),
                "attention_mask": torch.ones(BATCH * queries, seq, dtype=torch.long),
                "pixel_values": torch.randn(BATCH, 3, size, size, generator=gen)}

    return make


def _grounding_dino(num_labels: int = NUM_LABELS) -> nn.Module:  # classes are text tokens: num_labels is unused
    tf = _tf()
    text = tf.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=32)
    config = tf.GroundingDinoConfig(backbone_config=_swin(["stage2", "stage3", "stage4"]), text_config=text,
                                    use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
                                    num_queries=5, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64,
                                    decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2,
                                    d_model=32, num_feature_levels=4, encoder_n_points=2, decoder_n_points=2,
                                    max_text_len=16, disable_custom_kernels=True)
    return tf.GroundingDinoForObjectDetection(config)


def _grounding_dino_inputs(model: nn.Module) -> dict:
    gen = _gen()
    ids = _ids(100, (BATCH, 8), gen)  # below BERT's special ids
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]: Grounding DINO splits the text into phrases at special ids
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
            "pixel_values": torch.randn(BATCH, 3, 64, 64, generator=gen)}


# --------------------------------------------------------------------------------------------------- segmentation
def _maskformer(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    decoder = tf.DetrConfig(**_DETR_KW, **_NO_DOWNLOAD, backbone_config=_resnet(["stage4"]))
    config = tf.MaskFormerConfig(backbone_config=_swin(["stage1", "stage2", "stage3", "stage4"]),
                                 decoder_config=decoder, fpn_feature_size=32, mask_feature_size=32,  # GroupNorm(32, .)
                                 num_labels=num_labels, **_NO_DOWNLOAD)
    return tf.MaskFormerForInstanceSegmentation(config)


def _mask2former(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    config = tf.Mask2FormerConfig(backbone_config=_swin(["stage1", "stage2", "stage3", "stage4"]), feature_size=32,
                                  mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64, encoder_layers=1,
                                  decoder_layers=2, num_attention_heads=2, dim_feedforward=64, num_queries=5,
                                  num_labels=num_labels, **_NO_DOWNLOAD)
    return tf.Mask2FormerForUniversalSegmentation(config)


def _oneformer(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    config = tf.OneFormerConfig(backbone_config=_swin(["stage1", "stage2", "stage3", "stage4"]), num_queries=5,
                                task_seq_len=8, text_encoder_width=32, text_encoder_context_length=8,
                                text_encoder_num_layers=1, text_encoder_vocab_size=99, text_encoder_n_ctx=2,
                                conv_dim=32, mask_dim=32, hidden_dim=32, encoder_feedforward_dim=64, encoder_layers=1,
                                decoder_layers=2, num_attention_heads=2, dim_feedforward=64, query_dec_layers=1,
                                num_labels=num_labels, **_NO_DOWNLOAD)
    return tf.OneFormerForUniversalSegmentation(config)


def _oneformer_inputs(model: nn.Module) -> dict:
    gen = _gen()
    return {"pixel_values": torch.randn(BATCH, 3, 64, 64, generator=gen),
            "task_inputs": _ids(model.config.text_encoder_vocab_size, (BATCH, model.config.task_seq_len), gen)}


# --------------------------------------------------------------------------------------------------- depth
def _dpt(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    config = tf.DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                          image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                          neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_in_index=-1)
    return tf.DPTForDepthEstimation(config)


def _depth_anything(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    backbone = tf.Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=32,
                               patch_size=8, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = tf.DepthAnythingConfig(backbone_config=backbone, patch_size=8, reassemble_hidden_size=32,
                                    neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
                                    use_pretrained_backbone=False, use_timm_backbone=False, backbone=None)
    return tf.DepthAnythingForDepthEstimation(config)


def _glpn(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    config = tf.GLPNConfig(num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
                           hidden_sizes=[8, 16, 16, 16], num_attention_heads=[1, 1, 2, 2], mlp_ratios=[2, 2, 2, 2],
                           decoder_hidden_size=16)
    return tf.GLPNForDepthEstimation(config)


def _zoedepth(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    backbone = tf.BeitConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8, use_relative_position_bias=True,
                             reshape_hidden_states=False, out_indices=[1, 2, 3, 4])
    config = tf.ZoeDepthConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                               bottleneck_features=16, num_attractors=[4, 2, 2, 1], bin_embedding_dim=16,
                               num_relative_features=8, use_pretrained_backbone=False, use_timm_backbone=False,
                               backbone=None, bin_configurations=[{"n_bins": 8, "min_depth": 1e-3, "max_depth": 10.0}])
    return tf.ZoeDepthForDepthEstimation(config)


# --------------------------------------------------------------------------------------------------- dual encoders
def _dual(config_name: str, model_name: str, **vision: object):
    def build(num_labels: int = NUM_LABELS) -> nn.Module:
        tf = _tf()
        config = getattr(tf, config_name)(text_config=dict(_TEXT_KW), vision_config=dict(_VISION_KW, **vision))
        return getattr(tf, model_name)(config)

    return build


# BLIP's vision towers initialise with std 1e-10 (pretrained weights replace it): at that scale no adapter moves the
# output, so the tiny models take the usual 0.02.
_BLIP_VISION = dict(_VISION_KW, initializer_range=0.02)


def _blip(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    return tf.BlipModel(tf.BlipConfig(text_config=dict(_TEXT_KW), vision_config=dict(_BLIP_VISION), projection_dim=32))


def _blip2_retrieval(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    qformer = dict(_TEXT_KW, num_hidden_layers=2, max_position_embeddings=32, cross_attention_frequency=1,
                   encoder_hidden_size=_VISION_KW["hidden_size"], use_qformer_text_input=True)
    config = tf.Blip2Config(vision_config=dict(_BLIP_VISION), qformer_config=qformer, num_query_tokens=4,
                            image_text_hidden_size=16)
    return tf.Blip2ForImageTextRetrieval(config)


def _blip2_inputs(model: nn.Module) -> dict:
    gen = _gen()
    return {"input_ids": _ids(model.config.qformer_config.vocab_size, (BATCH, 7), gen),
            "pixel_values": torch.randn(BATCH, 3, 32, 32, generator=gen)}


def _siglip2_inputs(model: nn.Module) -> dict:
    gen = _gen()
    patch = model.config.vision_config.patch_size
    grid = 4
    return {"input_ids": _ids(model.config.text_config.vocab_size, (BATCH, 7), gen),
            "pixel_values": torch.randn(BATCH, grid * grid, 3 * patch * patch, generator=gen),
            "pixel_attention_mask": torch.ones(BATCH, grid * grid, dtype=torch.long),
            "spatial_shapes": torch.tensor([[grid, grid]] * BATCH)}


# --------------------------------------------------------------------------------------------------- MAE / video / SAM
def _vitmae(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    config = tf.ViTMAEConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                             decoder_num_attention_heads=2, decoder_intermediate_size=32)
    return tf.ViTMAEForPreTraining(config)


_VIDEO_KW = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32)


def _videomae(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    config = tf.VideoMAEConfig(patch_size=8, num_frames=4, tubelet_size=2, num_labels=num_labels, **_VIDEO_KW)
    return tf.VideoMAEForVideoClassification(config)


def _timesformer(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    config = tf.TimesformerConfig(patch_size=8, num_frames=2, num_labels=num_labels, **_VIDEO_KW)
    return tf.TimesformerForVideoClassification(config)


def _vivit(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    config = tf.VivitConfig(num_frames=4, tubelet_size=[2, 8, 8], num_labels=num_labels, **_VIDEO_KW)
    return tf.VivitForVideoClassification(config)


def _vjepa2(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    config = tf.VJEPA2Config(patch_size=8, crop_size=32, frames_per_clip=4, tubelet_size=2, hidden_size=32,
                             num_attention_heads=2, num_hidden_layers=2, mlp_ratio=2.0, num_pooler_layers=1,
                             pred_hidden_size=32, pred_num_attention_heads=2, pred_num_hidden_layers=1,
                             pred_num_mask_tokens=2, num_labels=num_labels)
    return tf.VJEPA2ForVideoClassification(config)


def _vjepa2_inputs(model: nn.Module) -> dict:
    return {"pixel_values_videos": torch.randn(BATCH, 4, 3, 32, 32, generator=_gen())}


def _eomt(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    config = tf.EomtConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32,
                           patch_size=8, num_upscale_blocks=1, num_blocks=1, num_queries=5, num_register_tokens=1,
                           num_labels=num_labels)
    return tf.EomtForUniversalSegmentation(config)


def _sam(num_labels: int = NUM_LABELS) -> nn.Module:
    tf = _tf()
    vision = tf.SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                                image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1], mlp_dim=64,
                                num_pos_feats=8)
    prompt = tf.SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = tf.SamMaskDecoderConfig(hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2,
                                      iou_head_hidden_dim=16)
    return tf.SamModel(tf.SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder))


def _sam_inputs(model: nn.Module) -> dict:
    gen = _gen()
    return {"pixel_values": torch.randn(BATCH, 3, 64, 64, generator=gen),
            "input_points": torch.rand(BATCH, 1, 1, 2, generator=gen) * 64,
            "input_labels": torch.ones(BATCH, 1, 1, dtype=torch.long),
            "multimask_output": False}


# --------------------------------------------------------------------------------------------------- the zoo
HF_TASK_ZOO: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], dict]]] = {
    # object detection
    "detr": (_detr_like("DetrConfig", "DetrForObjectDetection", ["stage4"], **_DETR_KW), _pixels()),
    "conditional-detr": (_detr_like("ConditionalDetrConfig", "ConditionalDetrForObjectDetection", ["stage4"],
                                    **_DETR_KW), _pixels()),
    "deformable-detr": (_detr_like("DeformableDetrConfig", "DeformableDetrForObjectDetection", _MULTI,
                                   **_DEFORMABLE_KW), _pixels()),
    "deformable-detr-box-refine": (_detr_like("DeformableDetrConfig", "DeformableDetrForObjectDetection", _MULTI,
                                              with_box_refine=True, two_stage=False, **_DEFORMABLE_KW), _pixels()),
    "deformable-detr-two-stage": (_detr_like("DeformableDetrConfig", "DeformableDetrForObjectDetection", _MULTI,
                                             with_box_refine=True, two_stage=True, two_stage_num_proposals=5,
                                             **_DEFORMABLE_KW), _pixels()),
    "dab-detr": (_detr_like("DabDetrConfig", "DabDetrForObjectDetection", ["stage4"], hidden_size=32,
                            encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64,
                            encoder_attention_heads=2, decoder_attention_heads=2, num_queries=5), _pixels()),
    "rt-detr": (_rt_detr(1), _pixels()),
    "rt-detr-v2": (_rt_detr(2), _pixels()),
    "d-fine": (_d_fine, _pixels()),
    "lw-detr": (_lw_detr, _pixels()),
    "yolos": (_yolos, _pixels()),
    "table-transformer": (_detr_like("TableTransformerConfig", "TableTransformerForObjectDetection", ["stage4"],
                                     **_DETR_KW), _pixels()),
    "owlvit": (_owl("OwlViTConfig", "OwlViTForObjectDetection"), _text_and_pixels(queries=2)),
    "owlv2": (_owl("Owlv2Config", "Owlv2ForObjectDetection"), _text_and_pixels(queries=2)),
    "grounding-dino": (_grounding_dino, _grounding_dino_inputs),
    # universal segmentation
    "maskformer": (_maskformer, _pixels()),
    "mask2former": (_mask2former, _pixels()),
    "oneformer": (_oneformer, _oneformer_inputs),
    "detr-segmentation": (_detr_segmentation, _pixels()),
    "eomt": (_eomt, _pixels(32)),
    # depth
    "dpt-depth": (_dpt, _pixels(32)),
    "depth-anything": (_depth_anything, _pixels(32)),
    "glpn": (_glpn, _pixels(64)),
    "zoedepth": (_zoedepth, _pixels(32)),
    # dual encoders
    "clip": (_dual("CLIPConfig", "CLIPModel"), _text_and_pixels()),
    "siglip": (_dual("SiglipConfig", "SiglipModel"), _text_and_pixels()),
    "siglip2": (_dual("Siglip2Config", "Siglip2Model", num_patches=16), _siglip2_inputs),
    "blip": (_blip, _text_and_pixels()),
    "blip-2-retrieval": (_blip2_retrieval, _blip2_inputs),
    # masked-autoencoder pretraining
    "vitmae": (_vitmae, _pixels(32)),
    # video classification
    "videomae": (_videomae, _video(4)),
    "timesformer": (_timesformer, _video(2)),
    "vivit": (_vivit, _video(4)),
    "vjepa2": (_vjepa2, _vjepa2_inputs),
    # promptable segmentation
    "sam": (_sam, _sam_inputs),
}

#: float output tensors, first match wins (see task_output)
_OUTPUT_KEYS = ("logits", "pred_boxes", "predicted_depth", "class_queries_logits", "masks_queries_logits",
                "logits_per_image", "pred_masks", "iou_scores", "last_hidden_state")


def task_output(output: object) -> torch.Tensor:
    """The main float tensor of a task model's forward output."""
    for key in _OUTPUT_KEYS:
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value
    raise TypeError(f"cannot find a float tensor in {type(output).__name__}")

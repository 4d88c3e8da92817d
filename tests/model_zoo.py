"""Tiny random-init models, one per registered vision family (tests enumerate the registry against this)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

NUM_CLASSES = 3


def _timm(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)

    return build


_VIT_KW = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)


def _hf(config_name: str, model_name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        config = getattr(transformers, config_name)(**kwargs)
        return getattr(transformers, model_name)(config)

    return build


_HF_VIT_KW = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                  patch_size=8, num_labels=NUM_CLASSES)


def _upernet(backbone: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        if backbone == "convnext":
            backbone_config = transformers.ConvNextConfig(num_stages=3, hidden_sizes=[8, 16, 32], depths=[1, 1, 1],
                                                          out_features=["stage1", "stage2", "stage3"])
        else:
            backbone_config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1, 1],
                                                      num_heads=[1, 2, 4], window_size=2,
                                                      out_features=["stage1", "stage2", "stage3"])
        config = transformers.UperNetConfig(backbone_config=backbone_config, hidden_size=16, auxiliary_in_channels=32,
                                            auxiliary_channels=8, num_labels=NUM_CLASSES, pool_scales=[1, 2])
        return transformers.UperNetForSemanticSegmentation(config)

    return build


def _tv(builder: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models as tvm

        if builder == "vit":
            from torchvision.models.vision_transformer import VisionTransformer

            return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                     mlp_dim=64, num_classes=NUM_CLASSES)
        if builder == "swin":
            from torchvision.models.swin_transformer import SwinTransformer

            return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                   window_size=[4, 4], num_classes=NUM_CLASSES)
        if builder == "convnext":
            from torchvision.models.convnext import CNBlockConfig, ConvNeXt

            return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=NUM_CLASSES)
        return getattr(tvm, builder)(weights=None, num_classes=NUM_CLASSES, **kwargs)

    return build


#: family name -> (builder, input shape)
ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "timm-vit": (_timm("vit_tiny_patch16_224", **_VIT_KW), (2, 3, 32, 32)),
    "timm-vit-distilled": (_timm("deit_tiny_distilled_patch16_224", **_VIT_KW), (2, 3, 32, 32)),
    "timm-eva": (_timm("eva02_tiny_patch14_224", img_size=28, depth=2, embed_dim=32, num_heads=2), (2, 3, 28, 28)),
    "timm-beit": (_timm("beit_base_patch16_224", **_VIT_KW), (2, 3, 32, 32)),
    "timm-swin": (_timm("swin_tiny_patch4_window7_224", img_size=32, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                        window_size=4), (2, 3, 32, 32)),
    "timm-convnext": (_timm("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)), (2, 3, 32, 32)),
    "timm-resnet": (_timm("resnet18", layers=(1, 1, 1, 1)), (2, 3, 32, 32)),
    "timm-efficientnet": (_timm("mobilenetv2_050"), (2, 3, 32, 32)),
    "timm-mobilenetv3": (_timm("mobilenetv3_small_050"), (2, 3, 32, 32)),
    "timm-regnet": (_timm("regnetx_002"), (2, 3, 32, 32)),
    "timm-byobnet": (_timm("resnext26ts"), (2, 3, 32, 32)),
    "hf-vit": (_hf("ViTConfig", "ViTForImageClassification", **_HF_VIT_KW), (2, 3, 32, 32)),
    "hf-deit": (_hf("DeiTConfig", "DeiTForImageClassification", **_HF_VIT_KW), (2, 3, 32, 32)),
    "hf-dinov2": (_hf("Dinov2Config", "Dinov2ForImageClassification", hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8, num_labels=NUM_CLASSES),
                  (2, 3, 32, 32)),
    "hf-beit": (_hf("BeitConfig", "BeitForImageClassification", **_HF_VIT_KW), (2, 3, 32, 32)),
    "hf-swin": (_hf("SwinConfig", "SwinForImageClassification", image_size=32, patch_size=4, embed_dim=16,
                    depths=[1, 1], num_heads=[1, 2], window_size=4, num_labels=NUM_CLASSES), (2, 3, 32, 32)),
    "hf-convnext": (_hf("ConvNextConfig", "ConvNextForImageClassification", num_stages=2, hidden_sizes=[8, 16],
                        depths=[1, 1], num_labels=NUM_CLASSES), (2, 3, 32, 32)),
    "hf-resnet": (_hf("ResNetConfig", "ResNetForImageClassification", embedding_size=8, hidden_sizes=[8, 16],
                      depths=[1, 1], layer_type="basic", num_labels=NUM_CLASSES), (2, 3, 32, 32)),
    "hf-mobilenet": (_hf("MobileNetV2Config", "MobileNetV2ForImageClassification", depth_multiplier=0.35,
                         image_size=32, num_labels=NUM_CLASSES), (2, 3, 32, 32)),
    "hf-segformer": (_hf("SegformerConfig", "SegformerForSemanticSegmentation", num_encoder_blocks=2, depths=[1, 1],
                         sr_ratios=[2, 1], hidden_sizes=[8, 16], num_attention_heads=[1, 2], patch_sizes=[7, 3],
                         strides=[4, 2], mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=NUM_CLASSES),
                     (2, 3, 32, 32)),
    "hf-dpt": (_hf("DPTConfig", "DPTForSemanticSegmentation", hidden_size=32, num_hidden_layers=4,
                   num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
                   backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                   num_labels=NUM_CLASSES), (2, 3, 32, 32)),
    "hf-clip-vision": (_hf("CLIPVisionConfig", "CLIPVisionModel", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8), (2, 3, 32, 32)),
    "hf-upernet": (_upernet("convnext"), (2, 3, 32, 32)),
    "tv-resnet": (_tv("resnet18"), (2, 3, 32, 32)),
    "tv-vit": (_tv("vit"), (2, 3, 32, 32)),
    "tv-swin": (_tv("swin"), (2, 3, 32, 32)),
    "tv-convnext": (_tv("convnext"), (2, 3, 32, 32)),
    "tv-efficientnet": (_tv("efficientnet_b0"), (2, 3, 32, 32)),
    "tv-mobilenet": (_tv("mobilenet_v3_small"), (2, 3, 32, 32)),
}

#: Extra models for families with more than one common variant.
EXTRA: dict[str, tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = {
    "siglip": ("hf-clip-vision", _hf("SiglipVisionConfig", "SiglipVisionModel", hidden_size=32,
                                      intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                                      patch_size=8), (2, 3, 32, 32)),
    "hf-swinv2": ("hf-swin", _hf("Swinv2Config", "Swinv2ForImageClassification", image_size=32, patch_size=4,
                                 embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4,
                                 num_labels=NUM_CLASSES), (2, 3, 32, 32)),
    "hf-convnextv2": ("hf-convnext", _hf("ConvNextV2Config", "ConvNextV2ForImageClassification",
                                         num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                                         num_labels=NUM_CLASSES),
                      (2, 3, 32, 32)),
    "upernet-swin": ("hf-upernet", _upernet("swin"), (2, 3, 32, 32)),
    # reads conv.stride of the (PEFT-wrapped) convs it calls: needs the conv-wrapper-attributes hook
    "hf-mobilenet-v1": ("hf-mobilenet", _hf("MobileNetV1Config", "MobileNetV1ForImageClassification",
                                            depth_multiplier=0.25, image_size=32, num_labels=NUM_CLASSES),
                        (2, 3, 32, 32)),
    "timm-swinv2": ("timm-swin", _timm("swinv2_tiny_window8_256", img_size=32, embed_dim=16, depths=(1, 1),
                                       num_heads=(1, 2), window_size=4), (2, 3, 32, 32)),
    "timm-convnextv2": ("timm-convnext", _timm("convnextv2_atto", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)),
                        (2, 3, 32, 32)),
    "timm-dinov2": ("timm-vit", _timm("vit_small_patch14_dinov2", img_size=28, depth=2, embed_dim=32, num_heads=2),
                    (2, 3, 28, 28)),
    # selective-kernel convs are dilated: LoRA (which ignores dilation) must skip them, the others adapt them
    "timm-skresnet": ("timm-resnet", _timm("skresnet18", layers=(1, 1, 1, 1)), (2, 3, 32, 32)),
    "timm-resnext": ("timm-resnet", _timm("resnext50_32x4d", layers=(1, 1, 1, 1)), (2, 3, 32, 32)),
}


#: One small config per method the presets resolve defaults for (tests of every family and task family).
METHOD_CONFIGS: dict[str, Callable[[], object]] = {
    "lora": lambda: __import__("peft").LoraConfig(r=4),
    "loha": lambda: __import__("peft").LoHaConfig(r=4),
    "lokr": lambda: __import__("peft").LoKrConfig(r=4),
    "ia3": lambda: __import__("peft").IA3Config(),
    "adalora": lambda: __import__("peft").AdaLoraConfig(init_r=4, target_r=2, total_step=10),
    "ssf": lambda: __import__("peft_vision_ext").SSFConfig(),
    "adaptformer": lambda: __import__("peft_vision_ext").AdaptFormerConfig(),
}


def awake(model: nn.Module) -> nn.Module:
    """Random init hides adapter effects where a scale starts at (or near) zero: timm ConvNeXt's 1e-6 layer scale,
    torchvision ViT's zero head, zero-initialised residual branches. Give such parameters ordinary values."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.is_floating_point() and parameter.abs().max() < 1e-3:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model


def awake_case(key: str) -> tuple[nn.Module, torch.Tensor]:
    """The zoo model ``key`` (seed 0, :func:`awake`, eval mode) and a fixed random input of its shape."""
    _, build, shape = all_models()[key]
    torch.manual_seed(0)
    return awake(build()).eval(), torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def output_without_grad(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's main output tensor for ``x`` (float, no autograd)."""
    with torch.no_grad():
        return model_output(model(x)).float()


def adaptformer_refuses(model: nn.Module) -> bool:
    """Whether AdaptFormer's default preset ("blocks") finds no module to sit beside on ``model`` (split MLPs, or a
    CNN without residual blocks such as MobileNetV1): get_peft_model then raises EmptyPresetError."""
    from peft_vision_ext import EmptyPresetError, resolve_targets

    try:
        resolve_targets(model, "blocks")
    except EmptyPresetError:
        return True
    return False


def all_models() -> dict[str, tuple[str, Callable[[], nn.Module], tuple[int, ...]]]:
    """case id -> (family, builder, input shape) for every zoo and extra model."""
    cases = {name: (name, build, shape) for name, (build, shape) in ZOO.items()}
    cases.update(EXTRA)
    return cases


def model_output(output: object) -> torch.Tensor:
    """The main tensor of a timm/torchvision/transformers forward output."""
    if isinstance(output, torch.Tensor):
        return output
    for key in ("logits", "last_hidden_state", "pooler_output"):
        value = getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot find a tensor in {type(output).__name__}")

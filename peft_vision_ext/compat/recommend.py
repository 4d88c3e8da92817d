"""``recommend(model, ...)``: a method, preset, config and learning rate for a vision model, with the reasons.

The rules follow common practice for vision PEFT and this plugin's compatibility matrix; every recommendation
is a config that ``check`` accepts on the model (a test holds them to that).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from ..adalora.defaults import vision_adalora_kwargs
from ..errors import NotAVisionModelError
from ..families import detect_family
from ..layers.kinds import LayerKind, layer_kind
from ..presets import preset_config

Memory = Literal["low", "normal", "high"]
_SEGMENTATION_HEADS = ("decode_head", "auxiliary_head", "segmentation_head", "seg_head")


@dataclass
class Recommendation:
    method: str
    preset: str
    config_kwargs: dict[str, Any]
    learning_rate: float
    reasons: list[str]
    alternatives: list[str] = field(default_factory=list)
    config: Any = None  # the ready PEFT config (LoraConfig, ...), built with preset_config

    def render(self) -> str:
        lines = [f"method {self.method}, preset {self.preset!r}, learning rate {self.learning_rate:g}",
                 "config: " + ", ".join(f"{k}={v!r}" for k, v in self.config_kwargs.items()), "why:"]
        lines += [f"  - {reason}" for reason in self.reasons]
        if self.alternatives:
            lines += ["alternatives:"] + [f"  - {alternative}" for alternative in self.alternatives]
        return "\n".join(lines)


def _quantized_bits(model: nn.Module) -> int | None:
    kinds = {layer_kind(module) for module in model.modules()}
    return 4 if LayerKind.BNB_4BIT in kinds else 8 if LayerKind.BNB_8BIT in kinds else None


def recommend(model: nn.Module, quantization: Literal["4bit", "8bit"] | int | None = None,
              memory: Memory | None = None, total_steps: int = 1000) -> Recommendation:
    """Recommend a PEFT method for ``model``.

    ``quantization``: the model is (or will be) trained on 4- or 8-bit weights (detected when it already holds
    bitsandbytes layers). ``memory``: "low" (tight), "normal" (default) or "high". ``total_steps`` becomes
    AdaLoRA's ``total_step`` (AdaLoraCallback corrects it to the Trainer's real step count).
    """
    detection = detect_family(model)
    if detection is None:
        raise NotAVisionModelError(f"recommend found no Linear or Conv2d layer in {type(model).__name__}.")
    if memory not in (None, "low", "normal", "high"):
        raise ValueError(f"memory must be 'low', 'normal' or 'high'; got {memory!r}.")
    bits = {"4bit": 4, "8bit": 8, 4: 4, 8: 8, None: None}.get(quantization, -1)
    if bits == -1:
        raise ValueError(f"quantization must be '4bit', '8bit' or None; got {quantization!r}.")
    bits = bits or _quantized_bits(model)
    memory = memory or "normal"
    kind = detection.kind
    reasons: list[str] = [f"detected {detection.family.name} ({kind})"]
    alternatives: list[str] = []

    if bits is not None:
        method, kwargs, rate = "lora", {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}, 2e-4
        reasons.append(f"{bits}-bit weights: LoRA is the method the compatibility matrix supports for training and "
                       "merging on bitsandbytes layers (LoHa/LoKr are refused on 4-bit; AdaLoRA and IA3 cannot "
                       "merge); 2e-4 is the usual QLoRA learning rate")
        alternatives.append("AdaLoRA trains on quantized layers too but cannot be merged into them")
    elif kind == "cnn":
        if memory == "low":
            method, kwargs, rate = "lokr", {"r": 8, "alpha": 8}, 1e-3
            reasons.append("tight memory on a CNN: LoKr's Kronecker factors store the fewest parameters per conv "
                           "and it adapts depthwise convs too")
            alternatives.append("LoRA (preset 'conv') usually reaches a little higher accuracy for more parameters")
        else:
            method, kwargs, rate = "lora", {"r": 8, "lora_alpha": 8}, 3e-3
            reasons.append("CNN: LoRA on the groups == 1 convolutions (the quick start: MobileNetV2 -> MNIST, "
                           "96.6 % with 6.7 % of the parameters trainable at lr 3e-3)")
            alternatives.append("LoHa or LoKr (presets include depthwise convs) when parameters are tight")
            if memory == "high":
                alternatives.append("AdaLoRA (this plugin's conv layer) to let the rank budget move between layers "
                                    "(MobileNetV2 task: +0.60 +- 0.90 points vs LoRA at the same final budget)")
    else:
        if memory == "high":
            method, rate = "adalora", 3e-3
            kwargs = vision_adalora_kwargs({"r": 8, "total_step": total_steps}, kind)
            reasons.append("ViT with memory to spare: AdaLoRA moves the rank budget to the layers that need it, "
                           "ending at the budget of a LoRA with r=8 (init_r 12 -> target_r 8); with the plugin's "
                           "vision defaults it measured on par with LoRA (ViT transfer task, 5 paired seeds: "
                           "+0.56 +- 1.71 points; PEFT's own defaults: -7.48); it trains 1.5x LoRA's parameters until "
                           "it prunes; pass peft_vision_ext.AdaLoraCallback() to Trainer (it derives the schedule)")
            alternatives.append("LoRA r=16 on attention: nearly as good, less memory")
        else:
            rank = 8 if memory == "low" else 16
            method, kwargs, rate = "lora", {"r": rank, "lora_alpha": rank, "lora_dropout": 0.1}, 1e-3
            reasons.append(f"{kind} network: LoRA on the attention projections is the established default for ViTs")
            alternatives.append("AdaLoRA when memory allows (adaptive ranks; on par with LoRA at the same final budget "
                                "in our ViT benchmark)")
            if memory == "low":
                reasons.append("tight memory: rank 8; activations dominate ViT training memory, so enable gradient "
                               "checkpointing before shrinking the adapter further")
                alternatives.append("LoKr compresses the adapter further, but LoHa/LoKr often end below LoRA on ViTs")
    reasons.append("adapters train at higher learning rates than full fine-tuning (which uses ~1e-5 to 1e-4 for "
                   "ViTs); the new task head trains at the same rate")
    preset = detection.family.default_preset(method) or "all-linear"
    segmentation = [head for head in detection.heads if head.split(".")[-1] in _SEGMENTATION_HEADS]
    if segmentation:
        reasons.append(f"segmentation: the decode head ({', '.join(segmentation)}) stays fully trainable "
                       "(modules_to_save)")
    config = preset_config(model, method, preset, **kwargs)
    kwargs = {**kwargs, "target_modules": sorted(config.target_modules),
              "modules_to_save": list(config.modules_to_save or [])}
    return Recommendation(method, preset, kwargs, rate, reasons, alternatives, config)

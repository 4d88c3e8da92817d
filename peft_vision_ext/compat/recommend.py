"""``recommend(model, ...)``: a method, preset, config and learning rate for a vision model, with the reasons.

The choices are data (:data:`CHOICES`): each row says when it applies, what to use and which measurements back
it (quoted from :mod:`peft_vision_ext.evidence`, whose numbers a test holds equal to ``benchmarks/results``).
``recommend`` picks the first row that matches; the "Choosing a method" page renders the same rows. Every
recommendation is a config that ``check`` accepts on the model (a test holds them to that).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from ..adalora.defaults import vision_adalora_kwargs
from ..errors import NotAVisionModelError
from ..evidence import quote, quoted_keys
from ..families import detect_family
from ..layers.kinds import LayerKind, layer_kind
from ..presets import preset_config

Memory = Literal["low", "normal", "high"]
MEMORY_LEVELS: tuple[str, ...] = ("low", "normal", "high")
KINDS: tuple[str, ...] = ("transformer", "hybrid", "cnn")
_SEGMENTATION_HEADS = ("decode_head", "auxiliary_head", "segmentation_head", "seg_head")
#: What every measured recipe used: rank 8, alpha 2 x rank, learning rate 3e-3 (accuracy_vit.py,
#: accuracy_mobilenet.py, adalora_vision.py, quantized_lora_variants.py).
MEASURED_LR = 3e-3
_LORA = {"r": 8, "lora_alpha": 16}


@dataclass(frozen=True)
class Choice:
    """One row of the choice table: when it applies, what to use, and why (``{group.name}`` quotes a measurement)."""
    kinds: tuple[str, ...]  # family kinds: "transformer", "hybrid", "cnn"
    quantized: bool  # trained on 4/8-bit (bitsandbytes) weights
    memory: tuple[str, ...]  # recommend()'s memory levels it serves
    method: str
    kwargs: dict[str, Any]
    learning_rate: float
    why: tuple[str, ...]
    alternatives: tuple[str, ...] = ()

    def matches(self, kind: str, quantized: bool, memory: str) -> bool:
        return kind in self.kinds and quantized == self.quantized and memory in self.memory

    @property
    def sources(self) -> list[str]:
        """The measurements this row quotes."""
        return quoted_keys(" ".join(self.why + self.alternatives))


_VIT_KINDS = ("transformer", "hybrid")
_ALTERNATIVE_ADALORA_VIT = (
    "AdaLoRA (preset_config(model, 'adalora', r=8): adaptive ranks, final budget of LoRA r=8): on par with LoRA on our "
    "ViT task ({adalora.vit:+.2f} +- {adalora.vit_std} points, 5 paired seeds; PEFT's own AdaLoRA defaults "
    "{adalora.vit_peft_defaults:+.2f}); process peak {adalora.peak_low}-{adalora.peak_high}x LoRA's")
_ALTERNATIVE_VISION_METHODS_VIT = (
    "SSF (peft_vision_ext.SSFConfig(): a scale and shift after every layer, {ssf.vit_params:,.0f} trainable "
    "parameters, merges exactly) or AdaptFormer (AdaptFormerConfig(): a bottleneck of 8 beside every MLP block, "
    "{adaptformer.vit_params:,.0f}): on our ViT task {ssf.vit:+.2f} +- {ssf.vit_std} and {adaptformer.vit:+.2f} +- "
    "{adaptformer.vit_std} points vs LoRA r=8 at lr 3e-3 (at lr 1e-2: SSF {ssf.vit_lr2:+.2f}, AdaptFormer "
    "{adaptformer.vit_lr2:+.2f}; 5 paired seeds)")
_ALTERNATIVE_VISION_METHODS_CNN = (
    "SSF (after every norm, {ssf.cnn_params:,.0f} trainable parameters, merges exactly) or AdaptFormer (beside every "
    "inverted residual block, {adaptformer.cnn_params:,.0f}): {ssf.cnn:+.2f} +- {ssf.cnn_std} and "
    "{adaptformer.cnn:+.2f} +- {adaptformer.cnn_std} points vs LoRA r=8 on MobileNetV2 (5 paired seeds)")
CHOICES: tuple[Choice, ...] = (
    Choice(KINDS, True, MEMORY_LEVELS, "lora", _LORA, MEASURED_LR, (
        "bitsandbytes weights: LoRA trains and merges on 4- and 8-bit layers (the compatibility matrix refuses "
        "LoHa/LoKr on 4-bit, and AdaLoRA and IA3 cannot merge into them)",
        "on our ViT task LoRA r=8 on 4-bit weights ended {quantized.lora_4bit:+.2f} +- "
        "{quantized.lora_4bit_std} points from fp32 LoRA (5 paired seeds); 8-bit {vit.lora_8bit} % and 4-bit "
        "{vit.lora_4bit} % vs fp32 {vit.lora} % (3 seeds)",
        "memory: a ViT-B/16 trains in {memory.vitb_lora_4bit:.0f} MiB peak with 4-bit LoRA vs "
        "{memory.vitb_lora_fp32:.0f} MiB with fp32 LoRA and {memory.vitb_full:.0f} MiB fully fine-tuned "
        "(gradient checkpointing on)",
    ), (
        "QPiSSA (LoraConfig(init_lora_weights='pissa') through peft_vision_ext.get_quantized_peft_model): starts "
        "closer to the fp32 model; {quantized.qpissa:+.2f} points from fp32 LoRA on our ViT task (5 paired seeds)",
        "SSF or AdaptFormer act on activations and train on 4-bit weights too: on the 4-bit ViT {ssf.vit_4bit:+.2f} +- "
        "{ssf.vit_4bit_std} and {adaptformer.vit_4bit:+.2f} +- {adaptformer.vit_4bit_std} points from their own fp32 "
        "runs (LoRA: {vitlora.4bit:+.2f} +- {vitlora.4bit_std}; 5 paired seeds), but below LoRA in fp32 on that task "
        "(SSF {ssf.vit:+.2f}, AdaptFormer {adaptformer.vit:+.2f} points)",
    )),
    Choice(("cnn",), False, ("low",), "lokr", {"r": 8, "alpha": 16}, MEASURED_LR, (
        "tight memory on a CNN: LoKr's Kronecker factors store the fewest parameters and adapt depthwise convs too: "
        "{cnn.lokr_params:,.0f} trainable parameters on MobileNetV2 vs LoRA's {cnn.lora_params:,.0f}, for "
        "{cnn.lokr} % vs {cnn.lora} % accuracy (MNIST-5k, 3 seeds)",
    ), (
        "LoRA (preset 'conv'): {cnn.lora} % with {cnn.lora_share:.1%} of the parameters trainable",
    )),
    Choice(("cnn",), False, ("normal", "high"), "lora", _LORA, MEASURED_LR, (
        "CNN: LoRA on the groups == 1 convolutions matched full fine-tuning on MobileNetV2 (MNIST-5k, 3 seeds: "
        "{cnn.lora} % vs {cnn.full} %) with {cnn.lora_share:.1%} of the parameters trainable",
    ), (
        "AdaLoRA (this plugin's conv layer, preset_config(model, 'adalora', r=8)): {adalora.cnn:+.2f} +- "
        "{adalora.cnn_std} points vs LoRA on MobileNetV2 (5 paired seeds, within the noise), process peak "
        "{adalora.peak_low}-{adalora.peak_high}x LoRA's",
        "LoKr when parameters are tight: {cnn.lokr_params:,.0f} trainable parameters, {cnn.lokr} %",
        _ALTERNATIVE_VISION_METHODS_CNN,
    )),
    Choice(_VIT_KINDS, False, ("low", "normal"), "lora", _LORA, MEASURED_LR, (
        "ViT: LoRA r=8 on the attention projections (fused qkv adapted whole) reached {vit.lora} % on our ViT task "
        "with {vit.lora_share:.1%} of the parameters trainable (full fine-tuning {vit.full} %, LoHa {vit.loha} %, "
        "LoKr {vit.lokr} %; 3 seeds)",
        "whole-qkv LoRA beat the q/v slices at the same parameter count ({fused.vit_qv:+.2f} +- "
        "{fused.vit_qv_std} points for the slices, 5 paired seeds)",
    ), (
        _ALTERNATIVE_ADALORA_VIT,
        _ALTERNATIVE_VISION_METHODS_VIT,
    )),
    Choice(_VIT_KINDS, False, ("high",), "lora", _LORA, MEASURED_LR, (
        "ViT: LoRA r=8 on the attention projections reached {vit.lora} % on our ViT task (3 seeds); no PEFT method "
        "we measured did better at this budget",
        "memory to spare buys full fine-tuning, not a larger adapter: it reached {vit.full} % on the same task, at "
        "{memory.vitb_full:.0f} MiB vs {memory.vitb_lora_fp32:.0f} MiB peak for LoRA on a ViT-B/16 (gradient "
        "checkpointing on); larger LoRA ranks were not measured",
    ), (
        _ALTERNATIVE_ADALORA_VIT,
        _ALTERNATIVE_VISION_METHODS_VIT,
    )),
)


@dataclass
class Recommendation:
    """What :func:`recommend` chose: method, preset, config keyword arguments, learning rate and the reasons."""
    method: str
    preset: str
    config_kwargs: dict[str, Any]
    learning_rate: float
    reasons: list[str]
    alternatives: list[str] = field(default_factory=list)
    config: Any = None  # the ready PEFT config (LoraConfig, ...), built with preset_config

    def render(self) -> str:
        """The recommendation as the CLI prints it."""
        lines = [f"method {self.method}, preset {self.preset!r}, learning rate {self.learning_rate:g}",
                 "config: " + ", ".join(f"{k}={v!r}" for k, v in self.config_kwargs.items()), "why:"]
        lines += [f"  - {reason}" for reason in self.reasons]
        if self.alternatives:
            lines += ["alternatives:"] + [f"  - {alternative}" for alternative in self.alternatives]
        return "\n".join(lines)


def choice_for(kind: str, quantized: bool, memory: str) -> Choice:
    """The first row of :data:`CHOICES` that serves this model kind, quantization and memory level."""
    for choice in CHOICES:
        if choice.matches(kind, quantized, memory):
            return choice
    raise LookupError(f"no choice for kind={kind!r}, quantized={quantized}, memory={memory!r}")


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
    if memory not in (None, *MEMORY_LEVELS):
        raise ValueError(f"memory must be 'low', 'normal' or 'high'; got {memory!r}.")
    bits = {"4bit": 4, "8bit": 8, 4: 4, 8: 8, None: None}.get(quantization, -1)
    if bits == -1:
        raise ValueError(f"quantization must be '4bit', '8bit' or None; got {quantization!r}.")
    bits = bits or _quantized_bits(model)
    memory = memory or "normal"
    choice = choice_for(detection.kind, bits is not None, memory)
    reasons = [f"detected {detection.family.name} ({detection.kind})"] + [quote(text) for text in choice.why]
    if bits is not None:
        reasons.insert(1, f"{bits}-bit weights")
    if memory == "low" and choice.method == "lora" and detection.kind != "cnn":
        reasons.append(quote("tight memory: activations dominate ViT training memory; gradient checkpointing took "
                             "a ViT-B/16's fp32 LoRA peak from {memory.vitb_lora_fp32_no_checkpointing:.0f} to "
                             "{memory.vitb_lora_fp32:.0f} MiB: enable it before shrinking the adapter"))
    reasons.append(f"learning rate {choice.learning_rate:g}: the rate every adapter run of our benchmarks used "
                   "(full fine-tuning needs ~10x less); not measured on ImageNet-pretrained models")
    kwargs = dict(choice.kwargs)
    if choice.method == "adalora":
        kwargs = vision_adalora_kwargs({**kwargs, "total_step": total_steps}, detection.kind)
    preset = detection.family.default_preset(choice.method) or "all-linear"
    segmentation = [head for head in detection.heads if head.split(".")[-1] in _SEGMENTATION_HEADS]
    if segmentation:
        reasons.append(f"segmentation: the decode head ({', '.join(segmentation)}) stays fully trainable "
                       "(modules_to_save)")
    config = preset_config(model, choice.method, preset, **kwargs)
    targets = config.target_modules  # a set, or one regular expression where names alone would be ambiguous
    kwargs = {**kwargs, "target_modules": targets if isinstance(targets, str) else sorted(targets),
              "modules_to_save": list(config.modules_to_save or [])}
    return Recommendation(choice.method, preset, kwargs, choice.learning_rate, reasons,
                          [quote(text) for text in choice.alternatives], config)


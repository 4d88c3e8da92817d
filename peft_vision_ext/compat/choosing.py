"""The "Choosing a method" page (docs/choosing.md): recommend()'s choice table and the measurements behind it.

Rendered from :data:`~peft_vision_ext.compat.recommend.CHOICES` and :mod:`peft_vision_ext.evidence`, so the page,
``recommend()`` and ``peft-vision recommend`` say the same thing; ``tests/test_evidence.py`` keeps the committed page
equal to :func:`choosing_page` and every quoted number equal to its results file.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from ..evidence import measured, quote
from .recommend import CHOICES, Choice

_INTRO = """\
# Choosing a method

`peft_vision_ext.recommend(model, quantization=None, memory=None)` and `peft-vision recommend MODEL` pick a row of
the table below for your model's kind (transformer, hybrid or CNN, detected from its family), whether its weights
are 4/8-bit, and your memory budget (`"low"`, `"normal"`, `"high"`); they return the ready config, with these
reasons. Every number here is quoted from a results file of `benchmarks/` (linked), and a test fails when a
re-run changes it. Where we have no measurement, the page says so.

The tasks behind the numbers are small: a ViT pretrained here on MNIST digits 0-4 and transferred to digits 5-9,
MobileNetV2 (ImageNet weights) on MNIST-5k, an FCOS detector with an ImageNet MobileNetV2 backbone on MNIST digits
drawn on canvases. They rank methods against
each other on vision networks; they are not ImageNet-scale accuracies.

## By model kind, quantization and memory

<!-- generated from peft_vision_ext.compat.recommend.CHOICES: python docs/generate.py -->
"""

_BY_TASK = """\

## By task

- **Classification**: the table above (ViT and MobileNetV2 tasks).
- **Detection** (torchvision FCOS; the backbone adapted, the new FPN and head trained in full): LoRA ended
  {detection.lora:+.2f} +- {detection.lora_std} mAP@50 points from full fine-tuning (5 paired seeds), AdaLoRA
  {detection.adalora:+.2f}, training the heads alone {detection.heads_only:+.2f}: adapt the backbone, do not freeze
  it. See [the detection results](results/detection.md) and the [detection notebook](notebooks/05_detection.ipynb).
- **Segmentation, depth, keypoints, video, dual encoders**: not measured. The presets keep every task head trainable
  (`modules_to_save`, e.g. SegFormer's `decode_head`), and the table's advice for the backbone's kind applies as far
  as we know; the [segmentation notebook](notebooks/02_segmentation_lora.ipynb) shows a run, not a comparison.

## Memory budget

Measured on a ViT-B/16 (batch 8, gradient checkpointing on; [quantized ViT memory](results/quantized_vit_memory.md)):
process peak {memory.vitb_full:.0f} MiB for full fine-tuning, {memory.vitb_lora_fp32:.0f} MiB for fp32 LoRA,
{memory.vitb_lora_4bit:.0f} MiB for LoRA on 4-bit weights. AdaLoRA's peak measured
{adalora.peak_low}-{adalora.peak_high}x LoRA's at the same final budget ([AdaLoRA](results/adalora_vision.md)).
Activations dominate ViT training memory: gradient checkpointing alone took fp32 LoRA's peak from
{memory.vitb_lora_fp32_no_checkpointing:.0f} to {memory.vitb_lora_fp32:.0f} MiB; turn it on before shrinking the
adapter.

## Fused q/k/v projections (timm `qkv`, `nn.MultiheadAttention`)

The presets adapt a fused projection whole (one rank-r LoRA on the layer, loadable by plain PEFT). At the same
parameter count the q/v slices ended {fused.vit_qv:+.2f} +- {fused.vit_qv_std} points from whole-layer LoRA on the
ViT task and {fused.swin_qv:+.2f} +- {fused.swin_qv_std} on a Swin (5 paired seeds each;
[fused qkv](results/fused_qkv.md)).
Slices would become the default only where a slice variant beats whole-layer LoRA by at least two standard errors of
the paired difference on both tasks; `tests/test_evidence.py` applies that rule to the results files and checks the
default (`peft_vision_ext.fused.slices.PRESET_FUSED`) against it.
Slices remain available: `preset_config(model, "lora", fused="slices")` or `use_fused_slices(config)`; see
[LoRA on fused projections](guides/fused-projections.md).
"""


def _links(keys: list[str]) -> str:
    """Markdown links to the results pages (docs/results/<file stem>.md) of the measurements ``keys`` quote."""
    stems = dict.fromkeys(PurePosixPath(measured(key).path).stem for key in keys)
    return ", ".join(f"[{stem}](results/{stem}.md)" for stem in stems) or "not measured"


def _config_text(choice: Choice) -> str:
    return ", ".join(f"{k}={v}" for k, v in choice.kwargs.items())


def _weights(choice: Choice) -> str:
    return "4/8-bit" if choice.quantized else "full precision"


def choices_markdown() -> str:
    """The choice table and, per row, its reasons and alternatives with their numbers."""
    lines = ["| model kind | weights | memory | method | config | learning rate | measured in |",
             "|---|---|---|---|---|---:|---|"]
    for choice in CHOICES:
        lines.append(f"| {', '.join(choice.kinds)} | {_weights(choice)} | {', '.join(choice.memory)} | "
                     f"{choice.method} | {_config_text(choice)} | {choice.learning_rate:g} | "
                     f"{_links(choice.sources)} |")
    for choice in CHOICES:
        lines += ["", f"**{', '.join(choice.kinds)}; {_weights(choice)}; memory {' / '.join(choice.memory)}: "
                  f"{choice.method}** ({_config_text(choice)}, learning rate {choice.learning_rate:g})", ""]
        lines += [f"- {quote(text)}" for text in choice.why]
        lines += [f"- Alternative: {quote(text)}" for text in choice.alternatives]
    return "\n".join(lines) + "\n"


def choosing_page() -> str:
    """The whole of docs/choosing.md."""
    return _INTRO + choices_markdown() + quote(_BY_TASK)

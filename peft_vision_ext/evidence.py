"""The measurements our advice rests on: each number, the results file it comes from and where in it.

Warnings, the matrix's advice, :func:`~peft_vision_ext.recommend` and the "Choosing a method" page quote these
numbers instead of writing their own, and ``tests/test_evidence.py`` reads every file named here and fails when a
number no longer matches it (re-running a benchmark then means updating this table, and the advice follows).
The results files ship with the repository, not with the wheel; hence the copies here.

Layer: base facts (imports nothing of ours).
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Formatter
from typing import Any

#: Where the results live, relative to the repository root; the docs link each measurement to its page.
RESULTS_DIR = "benchmarks/results"


@dataclass(frozen=True)
class Measurement:
    """One number from a results file: ``locate`` walks the JSON (keys, and ``{"variant": name}`` to pick a row)."""
    source: str  # file name under RESULTS_DIR (or a path from the repository root, if it contains "/")
    locate: tuple[Any, ...]
    value: float
    decimals: int  # how the advice prints it; the test compares at this precision
    what: str  # one line: what was measured, on which task

    @property
    def path(self) -> str:
        return self.source if "/" in self.source else f"{RESULTS_DIR}/{self.source}"

    def __format__(self, spec: str) -> str:
        return format(self.value, spec or f".{self.decimals}f")


def _row(variant: str) -> dict[str, str]:
    return {"variant": variant}


_VIT = "ViT transfer task (4-block ViT pretrained here on MNIST 0-4, digits 5-9, 3 seeds)"
_MOBILENET = "MobileNetV2 on MNIST-5k (3 seeds)"
_ADALORA = "AdaLoRA vs LoRA at the same final budget, 5 paired seeds"

_VIT_ROWS, _MOBILENET_ROWS = "vit_rows", "mobilenet_rows"


def _method(rows: str, variant: str, field: str, value: float, decimals: int, what: str) -> Measurement:
    """A row of benchmarks/results/vision_methods.json (the plugin's own methods, 5 paired seeds)."""
    return Measurement("vision_methods.json", (rows, _row(variant), field), value, decimals, what)


MEASURED: dict[str, Measurement] = {
    # the ViT transfer task (benchmarks/accuracy_vit.py)
    "vit.lora": Measurement("accuracy_vit.json", ("rows", _row("LoRA"), "accuracy_mean"), 78.73, 2,
                            f"LoRA r=8 on the whole fused qkv, accuracy %: {_VIT}"),
    "vit.lora_share": Measurement("accuracy_vit.json", ("rows", _row("LoRA"), "trainable_share"), 0.027, 3,
                                  "LoRA r=8: share of the ViT's parameters trained (head included)"),
    "vit.full": Measurement("accuracy_vit.json", ("rows", _row("full fine-tuning"), "accuracy_mean"), 84.2, 2,
                            f"full fine-tuning, accuracy %: {_VIT}"),
    "vit.loha": Measurement("accuracy_vit.json", ("rows", _row("LoHa"), "accuracy_mean"), 75.27, 2,
                            f"LoHa r=8, accuracy %: {_VIT}"),
    "vit.lokr": Measurement("accuracy_vit.json", ("rows", _row("LoKr"), "accuracy_mean"), 71.33, 2,
                            f"LoKr r=8, accuracy %: {_VIT}"),
    "vit.lora_4bit": Measurement("accuracy_vit.json", ("rows", _row("4-bit LoRA"), "accuracy_mean"), 80.73, 2,
                                 f"LoRA r=8 on 4-bit (nf4) weights, accuracy %: {_VIT}"),
    "vit.lora_8bit": Measurement("accuracy_vit.json", ("rows", _row("8-bit LoRA"), "accuracy_mean"), 79.6, 2,
                                 f"LoRA r=8 on 8-bit weights, accuracy %: {_VIT}"),
    # MobileNetV2 (benchmarks/accuracy_mobilenet.py)
    "cnn.lora": Measurement("accuracy_mobilenet.json", ("rows", _row("LoRA"), "accuracy_mean"), 96.5, 2,
                            f"LoRA on the pointwise convs, accuracy %: {_MOBILENET}"),
    "cnn.lora_share": Measurement("accuracy_mobilenet.json", ("rows", _row("LoRA"), "trainable_share"), 0.067, 3,
                                  "LoRA: share of MobileNetV2's parameters trained (head included)"),
    "cnn.full": Measurement("accuracy_mobilenet.json", ("rows", _row("full fine-tuning"), "accuracy_mean"), 96.47,
                            2, f"full fine-tuning, accuracy %: {_MOBILENET}"),
    "cnn.lokr": Measurement("accuracy_mobilenet.json", ("rows", _row("LoKr"), "accuracy_mean"), 95.9, 2,
                            f"LoKr (depthwise convs included), accuracy %: {_MOBILENET}"),
    "cnn.lokr_params": Measurement("accuracy_mobilenet.json", ("rows", _row("LoKr"), "trainable"), 29980, 0,
                                   "LoKr: trainable parameters on MobileNetV2"),
    "cnn.lora_params": Measurement("accuracy_mobilenet.json", ("rows", _row("LoRA"), "trainable"), 161034, 0,
                                   "LoRA: trainable parameters on MobileNetV2"),
    # AdaLoRA with the plugin's vision defaults vs LoRA (benchmarks/adalora_vision.py)
    "adalora.vit": Measurement("adalora_vision.json",
                               ("tasks", "vit", _row("AdaLoRA, vision defaults, orth 0"), "paired_difference_mean"),
                               0.56, 2, f"AdaLoRA (vision defaults) minus LoRA, points: ViT task, {_ADALORA}"),
    "adalora.vit_std": Measurement("adalora_vision.json",
                                   ("tasks", "vit", _row("AdaLoRA, vision defaults, orth 0"),
                                    "paired_difference_std"), 1.71, 2, "its standard deviation over the seeds"),
    "adalora.vit_peft_defaults": Measurement("adalora_vision.json",
                                             ("tasks", "vit", _row("AdaLoRA, PEFT defaults"),
                                              "paired_difference_mean"), -7.48, 2,
                                             f"AdaLoRA (PEFT's defaults) minus LoRA, points: ViT task, {_ADALORA}"),
    "adalora.cnn": Measurement("adalora_vision.json",
                               ("tasks", "mobilenet", _row("AdaLoRA, vision defaults, orth 0.5"),
                                "paired_difference_mean"), 0.60, 2,
                               f"AdaLoRA (vision defaults) minus LoRA, points: MobileNetV2 task, {_ADALORA}"),
    "adalora.cnn_std": Measurement("adalora_vision.json",
                                   ("tasks", "mobilenet", _row("AdaLoRA, vision defaults, orth 0.5"),
                                    "paired_difference_std"), 0.90, 2, "its standard deviation over the seeds"),
    # the lowest and highest process peak of every AdaLoRA run, as a multiple of LoRA's (the test checks the range)
    "adalora.peak_low": Measurement("adalora_vision.json",
                                    ("tasks", "mobilenet", _row("AdaLoRA, vision defaults, orth 0.5"),
                                     "peak_ratio_vs_lora"), 0.95, 2,
                                    "lowest AdaLoRA process peak memory / LoRA's (MobileNetV2 task)"),
    "adalora.peak_high": Measurement("adalora_vision.json",
                                     ("tasks", "vit", _row("AdaLoRA, PEFT defaults"), "peak_ratio_vs_lora"), 1.04, 2,
                                     "highest AdaLoRA process peak memory / LoRA's (ViT task)"),
    "adalora.vit_trainable": Measurement("adalora_vision.json",
                                         ("tasks", "vit", _row("AdaLoRA, vision defaults, orth 0"), "trainable"),
                                         18965, 0, "AdaLoRA's trainable parameters before pruning (ViT task; "
                                         "LoRA r=8: 12,773)"),
    # LoRA on fused q/k/v projections: whole layer vs slices at the same parameter count (benchmarks/fused_qkv.py)
    "fused.vit_qv": Measurement("fused_qkv.json", ("rows", _row("q/v slices, r=8"), "paired_difference_mean"),
                                -2.12, 2, "q/v slices r=8 minus whole-qkv LoRA r=8, points: ViT task, 5 paired seeds"),
    "fused.vit_qv_std": Measurement("fused_qkv.json", ("rows", _row("q/v slices, r=8"), "paired_difference_std"),
                                    1.61, 2, "its standard deviation over the seeds"),
    "fused.swin_qv": Measurement("fused_qkv_swin.json", ("rows", _row("q/v slices, r=8"), "paired_difference_mean"),
                                 -1.00, 2, "q/v slices r=8 minus whole-qkv LoRA r=8, points: Swin task, 5 paired "
                                 "seeds"),
    "fused.swin_qv_std": Measurement("fused_qkv_swin.json", ("rows", _row("q/v slices, r=8"),
                                                             "paired_difference_std"),
                                     2.35, 2, "its standard deviation over the seeds"),
    # LoRA on 4-bit weights (benchmarks/quantized_lora_variants.py, 5 paired seeds vs fp32 LoRA)
    "quantized.lora_4bit": Measurement("quantized_lora_variants.json",
                                       ("rows", _row("4-bit LoRA"), "paired_vs_fp32_lora_mean"), -1.08, 2,
                                       "4-bit LoRA minus fp32 LoRA, points: ViT task, 5 paired seeds"),
    "quantized.lora_4bit_std": Measurement("quantized_lora_variants.json",
                                           ("rows", _row("4-bit LoRA"), "paired_vs_fp32_lora_std"), 2.17, 2,
                                           "its standard deviation over the seeds"),
    "quantized.qpissa": Measurement("quantized_lora_variants.json",
                                    ("rows", _row("4-bit QPiSSA"), "paired_vs_fp32_lora_mean"), -0.20, 2,
                                    "4-bit QPiSSA minus fp32 LoRA, points: ViT task, 5 paired seeds"),
    # ViT-B/16 training memory, 4-bit vs fp32 LoRA (benchmarks/quantized_vit_memory.py, gradient checkpointing on)
    "memory.vitb_lora_fp32": Measurement("benchmarks/quantized_vit_memory.json",
                                         ("rows", {"variant": "fp32 LoRA", "checkpointing": True}, "peak_mib"),
                                         1760, 0, "ViT-B/16 fp32 LoRA, checkpointing: process peak MiB"),
    "memory.vitb_lora_fp32_no_checkpointing": Measurement(
        "benchmarks/quantized_vit_memory.json", ("rows", {"variant": "fp32 LoRA", "checkpointing": False}, "peak_mib"),
        2213, 0, "ViT-B/16 fp32 LoRA, no checkpointing: process peak MiB"),
    "memory.vitb_lora_4bit": Measurement("benchmarks/quantized_vit_memory.json",
                                         ("rows", {"variant": "4-bit LoRA", "checkpointing": True}, "peak_mib"),
                                         1199, 0, "ViT-B/16 4-bit LoRA, checkpointing: process peak MiB"),
    "memory.vitb_full": Measurement("benchmarks/quantized_vit_memory.json",
                                    ("rows", {"variant": "fp32 full FT", "checkpointing": True}, "peak_mib"),
                                    2683, 0, "ViT-B/16 full fine-tuning, checkpointing: process peak MiB"),
    # detection (benchmarks/detection.py): mAP@50 minus full fine-tuning's, 5 paired seeds
    "detection.lora": Measurement("detection.json", ("rows", _row("LoRA"), "map_50_vs_full_mean"), 5.40, 2,
                                  "LoRA minus full fine-tuning, mAP@50 points: detection task, 5 paired seeds"),
    "detection.lora_std": Measurement("detection.json", ("rows", _row("LoRA"), "map_50_vs_full_std"), 4.23, 2,
                                      "its standard deviation over the seeds"),
    "detection.adalora": Measurement("detection.json", ("rows", _row("AdaLoRA"), "map_50_vs_full_mean"), 0.17, 2,
                                     "AdaLoRA minus full fine-tuning, mAP@50 points: detection task, 5 paired seeds"),
    "detection.heads_only": Measurement("detection.json", ("rows", _row("heads only"), "map_50_vs_full_mean"),
                                        -19.44, 2, "training the heads only minus full fine-tuning, mAP@50 points"),
    # the plugin's own methods (benchmarks/vision_methods.py, 5 paired seeds)
    "ssf.vit": _method(_VIT_ROWS, "SSF", "paired_vs_lora_mean", -7.36, 2,
                       "SSF (lr 3e-3) minus LoRA r=8, points: ViT task"),
    "ssf.vit_std": _method(_VIT_ROWS, "SSF", "paired_vs_lora_std", 2.53, 2,
                       "its standard deviation over the seeds"),
    "ssf.vit_lr2": _method(_VIT_ROWS, "SSF lr 1e-2", "paired_vs_lora_mean", -4.88, 2,
                       "SSF at lr 1e-2 minus LoRA r=8, points: ViT task"),
    "ssf.vit_params": _method(_VIT_ROWS, "SSF", "trainable", 9317, 0,
                       "SSF's trainable parameters on the ViT task (head included)"),
    "ssf.vit_4bit": _method(_VIT_ROWS, "4-bit SSF", "paired_vs_fp32_mean", -0.04, 2,
                       "SSF on the 4-bit ViT minus SSF on fp32, points"),
    "ssf.vit_4bit_std": _method(_VIT_ROWS, "4-bit SSF", "paired_vs_fp32_std", 0.82, 2,
                       "its standard deviation over the seeds"),
    "ssf.cnn": _method(_MOBILENET_ROWS, "SSF", "paired_vs_lora_mean", -2.68, 2,
                       "SSF minus LoRA r=8, points: MobileNetV2 task"),
    "ssf.cnn_std": _method(_MOBILENET_ROWS, "SSF", "paired_vs_lora_std", 2.43, 2,
                       "its standard deviation over the seeds"),
    "ssf.cnn_params": _method(_MOBILENET_ROWS, "SSF", "trainable", 46922, 0,
                       "SSF's trainable parameters on MobileNetV2 (head included)"),
    "adaptformer.vit": _method(_VIT_ROWS, "AdaptFormer", "paired_vs_lora_mean", -9.68, 2,
                       "AdaptFormer (bottleneck 8, lr 3e-3) minus LoRA r=8, points: ViT task"),
    "adaptformer.vit_std": _method(_VIT_ROWS, "AdaptFormer", "paired_vs_lora_std", 1.58, 2,
                       "its standard deviation over the seeds"),
    "adaptformer.vit_lr2": _method(_VIT_ROWS, "AdaptFormer lr 1e-2", "paired_vs_lora_mean", -5.08, 2,
                       "AdaptFormer at lr 1e-2 minus LoRA r=8, points: ViT task"),
    "adaptformer.vit_params": _method(_VIT_ROWS, "AdaptFormer", "trainable", 7045, 0,
                       "AdaptFormer's trainable parameters on the ViT task (head included)"),
    "adaptformer.vit_4bit": _method(_VIT_ROWS, "4-bit AdaptFormer", "paired_vs_fp32_mean", -1.36, 2,
                       "AdaptFormer on the 4-bit ViT minus on fp32, points"),
    "adaptformer.vit_4bit_std": _method(_VIT_ROWS, "4-bit AdaptFormer", "paired_vs_fp32_std", 1.32, 2,
                       "its standard deviation over the seeds"),
    "adaptformer.cnn": _method(_MOBILENET_ROWS, "AdaptFormer", "paired_vs_lora_mean", -2.6, 2,
                       "AdaptFormer minus LoRA r=8, points: MobileNetV2 task"),
    "adaptformer.cnn_std": _method(_MOBILENET_ROWS, "AdaptFormer", "paired_vs_lora_std", 1.5, 2,
                       "its standard deviation over the seeds"),
    "adaptformer.cnn_params": _method(_MOBILENET_ROWS, "AdaptFormer", "trainable", 36210, 0,
                       "AdaptFormer's trainable parameters on MobileNetV2 (head included)"),
    "vitlora.params": _method(_VIT_ROWS, "LoRA r=8", "trainable", 12773, 0,
                       "LoRA r=8's trainable parameters on the ViT task (head included)"),
    "vitlora.4bit": _method(_VIT_ROWS, "4-bit LoRA r=8", "paired_vs_fp32_mean", -1.08, 2,
                       "LoRA r=8 on the 4-bit ViT minus fp32 LoRA, points"),
    "vitlora.4bit_std": _method(_VIT_ROWS, "4-bit LoRA r=8", "paired_vs_fp32_std", 2.17, 2,
                       "its standard deviation over the seeds"),
    "ssf.merged_forward": Measurement("vision_methods.json", ("ssf_merged_forward", "merged_over_base"), 0.97, 3,
                                      "forward time of the SSF-merged ViT / the base ViT (batch 64, rotating rounds)"),
}


def measured(key: str) -> Measurement:
    """The measurement named ``key`` (a KeyError names the known keys)."""
    try:
        return MEASURED[key]
    except KeyError:
        raise KeyError(f"no measurement {key!r}; known: {', '.join(MEASURED)}") from None


def locate(data: Any, path: tuple[Any, ...]) -> Any:
    """Walk ``path`` through a results file's JSON: dict keys, and dicts that pick the one list row matching them."""
    for step in path:
        if isinstance(step, dict):
            rows = [row for row in data if all(row.get(k) == v for k, v in step.items())]
            if len(rows) != 1:
                raise LookupError(f"{len(rows)} rows match {step}")
            data = rows[0]
        else:
            data = data[step]
    return data


class _Group:
    """``{vit.lora}`` in a text: the ``vit`` group, whose attribute ``lora`` is the measurement ``vit.lora``."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    def __getattr__(self, name: str) -> Measurement:
        return measured(f"{self._prefix}.{name}")


class _Groups(dict):
    def __missing__(self, key: str) -> _Group:
        return _Group(key)


def quote(text: str) -> str:
    """``text`` with every ``{group.name}`` / ``{group.name:+.2f}`` field replaced by that measurement's value."""
    return text.format_map(_Groups())


def quoted_keys(text: str) -> list[str]:
    """The measurements ``text`` quotes, in order of first appearance."""
    keys = [field.split(":")[0].split("!")[0] for _, field, _, _ in Formatter().parse(text) if field]
    return list(dict.fromkeys(keys))

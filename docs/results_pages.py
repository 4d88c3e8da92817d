"""The tables of the results pages (docs/results/*.md), rendered from the JSON the benchmarks write.

Each function returns one block: a line naming the JSON file and the machine it was measured on, then the table.
The prose around the blocks (what each benchmark does, what the numbers say) is hand-written in the pages.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
MIB = 1024 * 1024


def _load(path: str) -> dict:
    return json.loads((BENCHMARKS / path).read_text())


def _table(columns: list[tuple[str, str]], rows: list[list[str]]) -> list[str]:
    """Markdown table; each column is (title, "l" or "r")."""
    lines = ["| " + " | ".join(title for title, _ in columns) + " |",
             "|" + "|".join("---:" if align == "r" else "---" for _, align in columns) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _machine(machine: dict | None) -> str:
    if not machine:
        return ""
    torch = machine["torch"].split("+")[0]  # the local build tag (+cu130) says nothing about a CPU run
    gpu = f"GPU {machine['gpu']}" if machine.get("gpu") else "no GPU"
    return (f" on {machine['cpus']} CPU cores ({machine['machine']}), {gpu}; torch {torch}, peft {machine['peft']}, "
            f"transformers {machine['transformers']}, timm {machine['timm']}, bitsandbytes {machine['bitsandbytes']}")


def _source(path: str, machine: dict | None) -> str:
    return f"From `benchmarks/{path}`{_machine(machine)}."


def _mean_std(mean: float, std: float, digits: int = 2, sign: bool = False) -> str:
    return f"{mean:{'+' if sign else ''}.{digits}f} ± {std:.{digits}f}"


def _pretraining(data: dict) -> str:
    return f"Pretraining (digits 0-4): {data['pretraining']['pretrain_accuracy_digits_0_4'] * 100:.1f} % held-out."


def _share(value: float) -> str:
    return f"{value * 100:.2f} %"


def _accuracy(file: str, reference: str, label: str, pretrained_here: bool) -> str:
    """One accuracy benchmark's table; "vs ``label``" is each variant's mean minus the ``reference`` row's."""
    data = _load(file)
    base = next(row for row in data["rows"] if row["variant"] == reference)["accuracy_mean"]
    columns = [("variant", "l"), ("trainable params", "r"), ("share", "r"), ("accuracy % (mean ± std)", "r"),
               (f"vs {label}", "r"), ("s / epoch", "r"), ("peak MB", "r")]
    rows = [[row["variant"], f"{row['trainable']:,}", _share(row["trainable_share"]),
             _mean_std(row["accuracy_mean"], row["accuracy_std"]), f"{row['accuracy_mean'] - base:+.2f}",
             f"{row['seconds_per_epoch']:.1f}", f"{row['peak_mib']:.0f}"] for row in data["rows"]]
    pretraining = [_pretraining(data)] if pretrained_here else []
    return "\n".join([_source(file, data["machine"]), *pretraining, "", *_table(columns, rows)])


def accuracy_mobilenet() -> str:
    return _accuracy("results/accuracy_mobilenet.json", "full fine-tuning", "full FT", pretrained_here=False)


def accuracy_vit() -> str:
    return _accuracy("results/accuracy_vit.json", "LoRA", "fp32 LoRA", pretrained_here=True)


def quantized_lora_variants() -> str:
    data = _load("results/quantized_lora_variants.json")
    columns = [("variant", "l"), ("accuracy % (mean ± std)", "r"), ("vs fp32 LoRA, paired (mean ± std)", "r"),
               ("logit error at start", "r"), ("s / epoch", "r"), ("peak MB", "r")]
    rows = [[row["variant"], _mean_std(row["accuracy_mean"], row["accuracy_std"]),
             _mean_std(row["paired_vs_fp32_lora_mean"], row["paired_vs_fp32_lora_std"], sign=True),
             f"{row['start_logit_error']:.4f}", f"{row['seconds_per_epoch']:.1f}", f"{row['peak_mib']:.0f}"]
            for row in data["rows"]]
    pretraining = _pretraining(data)
    return "\n".join([_source("results/quantized_lora_variants.json", data["machine"]), pretraining, "",
                      *_table(columns, rows)])


#: fused_qkv*.json's variant -> the option that selects it (PRESET_FUSED, "whole", is the presets' default)
FUSED_OPTIONS = {
    "whole qkv, r=8": '`attention` preset (default), `fused="whole"`',
    "q/v slices, r=8": '`attention` preset, `fused="slices"`',
}


def fused_qkv(file: str = "results/fused_qkv.json") -> str:
    """The whole-vs-slices table of one fused_qkv.py run; ViT-S step columns where the run measured them."""
    data = _load(file)
    steps = "vit_s_step_s" in data["rows"][0]
    columns = [("LoRA on the fused `qkv`", "l"), ("trainable params", "r"), ("accuracy % (mean ± std)", "r"),
               ("paired difference vs whole qkv", "r")]
    if steps:
        columns += [("ViT-S adapter params", "r"), ("ViT-S step (s)", "r"), ("vs whole qkv", "r")]
    rows = []
    for row in data["rows"]:
        label = row["variant"] + (f" ({FUSED_OPTIONS[row['variant']]})" if row["variant"] in FUSED_OPTIONS else "")
        paired = ("-" if row["paired_difference_mean"] == 0 and row["paired_difference_std"] == 0
                  else _mean_std(row["paired_difference_mean"], row["paired_difference_std"], sign=True))
        cells = [label, f"{row['trainable']:,}", _mean_std(row["accuracy_mean"], row["accuracy_std"]), paired]
        if steps:
            cells += [f"{row['vit_s_adapter_params']:,}", f"{row['vit_s_step_s']:.3f}",
                      f"{row['vit_s_step_ratio']:.2f}x"]
        rows.append(cells)
    pretraining = _pretraining(data)
    return "\n".join([_source(file, data["machine"]), pretraining, "", *_table(columns, rows)])


#: adalora_vision.json's task -> (the row that is the plugin's default there, what it is the default for)
ADALORA_DEFAULTS = {
    "vit": ("AdaLoRA, vision defaults, orth 0", "default for transformers"),
    "mobilenet": ("AdaLoRA, vision defaults, orth 0.5", "default for CNNs"),
}


def _adalora_task(task: str) -> str:
    data = _load("results/adalora_vision.json")
    columns = [("variant", "l"), ("trainable at start (share)", "r"), ("adapter params kept", "r"),
               ("accuracy % (mean ± std)", "r"), ("paired diff. vs LoRA", "r"), ("s / epoch", "r"),
               ("peak MB (vs LoRA)", "r")]
    default, why = ADALORA_DEFAULTS[task]
    rows = []
    for row in data["tasks"][task]:
        paired = _mean_std(row["paired_difference_mean"], row["paired_difference_std"], sign=True)
        label = row["variant"]
        if label == default:
            label, paired = f"**{label}** ({why})", f"**{paired}**"
        rows.append([label, f"{row['trainable']:,} ({_share(row['trainable_share'])})",
                     f"{round(row['final_adapter_params']):,}", _mean_std(row["accuracy_mean"], row["accuracy_std"]),
                     paired, f"{row['seconds_per_epoch']:.1f}",
                     f"{row['peak_mib']:.0f} ({row['peak_ratio_vs_lora']:.2f}x)"])
    return "\n".join([_source("results/adalora_vision.json", data["machine"]), "", *_table(columns, rows)])


def detection() -> str:
    data = _load("results/detection.json")
    columns = [("variant", "l"), ("trainable: adapters + new parts (+ backbone)", "r"), ("of full FT", "r"),
               ("mAP@0.5 %", "r"), ("vs full FT (paired)", "r"), ("mAP@[.5:.95] %", "r"), ("s / epoch", "r"),
               ("peak MB", "r")]
    rows = []
    for row in data["rows"]:
        parts = row["trainable_parts"]
        trainable = f"{parts['adapters']:,} + {parts['new_parts']:,}" + (
            f" + {parts['backbone']:,}" if parts["backbone"] else "")
        rows.append([row["variant"], trainable, f"{row['share_of_full'] * 100:.0f} %",
                     _mean_std(row["map_50_mean"], row["map_50_std"], 1),
                     _mean_std(row["map_50_vs_full_mean"], row["map_50_vs_full_std"], 1, sign=True),
                     _mean_std(row["map_mean"], row["map_std"], 1), f"{row['seconds_per_epoch']:.0f}",
                     f"{row['peak_mib']:.0f}"])
    return "\n".join([_source("results/detection.json", data["machine"]), "", *_table(columns, rows)])


def overhead() -> str:
    data = _load("results/overhead.json")
    ratio = (data["import_peft_s"] + data["import_plugin_extra_s"]) / data["import_peft_s"]
    imports = (f"`import peft` {data['import_peft_s']:.2f} s, then `import peft_vision_ext` "
               f"+{data['import_plugin_extra_s']:.3f} s ({ratio:.2f}x); medians of {data['repeats']} fresh processes.")
    columns = [("model", "l"), ("plain PEFT, explicit targets (s)", "r"),
               ("plugin, preset + matrix check + probe forward (s)", "r"), ("ratio", "r")]
    rows = [[model, f"{plain:.3f}", f"{data['get_peft_model_plugin_s'][model]:.3f}",
             f"{data['get_peft_model_plugin_s'][model] / plain:.2f}x"]
            for model, plain in data["get_peft_model_plain_s"].items()]
    return "\n".join([_source("results/overhead.json", data["machine"]), "", imports, "", *_table(columns, rows)])


#: cpu_paths.json's variant -> its description on the page
CPU_PATH_LABELS = {
    "4-bit, standard layout (default)": "4-bit, standard layout (the plugin's default)",
    "4-bit, AVX512-BF16 packed": "4-bit, AVX512-BF16 packed (`enable_inference_packing`)",
    "LoRA on qkv, routed (q/v biases)": "attention computes F.linear with qkv.weight (q/v biases): routed through "
                                        "the adapter",
    "LoRA on qkv, called (no q/v biases)": "the same network without q/v biases: attention calls qkv, nothing to route",
}


def cpu_paths() -> str:
    data = _load("results/cpu_paths.json")
    settings = data["settings"]
    packed = "takes" if data["avx512bf16_packed_path"] else "does not take"
    inference = _table(
        [(f"ViT-B/16 inference (224 px, eval, no grad, batch {settings['batch']})", "l"), ("images/s", "r"),
         ("max logit diff vs fp32", "r")],
        [[CPU_PATH_LABELS.get(row["variant"], row["variant"]), f"{row['images_per_s']:.1f}",
          f"{row['max_logit_diff_vs_fp32']:.2f}" if row["max_logit_diff_vs_fp32"] else "0"]
         for row in data["inference"]])
    routed, called = data["routing"]
    routing = _table(
        [(f"BEiT-B/16 LoRA r=16 on the whole qkv, train step (batch {settings['batch']})", "l"), ("s / step", "r"),
         ("vs not routed", "r")],
        [[CPU_PATH_LABELS.get(row["variant"], row["variant"]), f"{row['step_s']:.2f}",
          f"{row['step_s'] / called['step_s']:.2f}x"] for row in (routed, called)])
    return "\n".join([_source("results/cpu_paths.json", data["machine"]) + f" This CPU {packed} bitsandbytes' "
                      f"AVX512-BF16 packed path; medians of {settings['repeats']}.", "", *inference, "", *routing])


def quantized_vit_memory() -> str:
    data = _load("quantized_vit_memory.json")
    rows = data["rows"]
    base = next(row for row in rows if row["variant"] == "fp32 LoRA" and not row["checkpointing"])
    columns = [("variant", "l"), ("grad. ckpt", "l"), ("weight MB", "r"), ("weights vs fp32", "r"),
               ("tensor peak MB", "r"), ("vs fp32 LoRA", "r"), ("RSS peak MB (glibc defaults)", "r"),
               ("vs fp32 LoRA", "r"), ("RSS peak MB (mmap threshold 128 KiB)", "r"), ("vs fp32 LoRA", "r"),
               ("s / step (defaults)", "r"), ("vs fp32 LoRA", "r"), ("s / step (threshold)", "r")]
    table = [[row["variant"], "yes" if row["checkpointing"] else "no", f"{row['weight_bytes'] / 1e6:.0f}",
              f"{row['weight_bytes'] / row['fp32_weight_bytes']:.3f}x", f"{row['tensor_peak_mib']:.0f}",
              f"{row['tensor_peak_mib'] / base['tensor_peak_mib']:.2f}x", f"{row['peak_mib']:.0f}",
              f"{row['peak_mib'] / base['peak_mib']:.2f}x", f"{row['fixed_peak_mib']:.0f}",
              f"{row['fixed_peak_mib'] / base['fixed_peak_mib']:.2f}x", f"{row['step_s']:.2f}",
              f"{row['step_s'] / base['step_s']:.2f}x", f"{row['fixed_step_s']:.2f}"] for row in rows]
    source = (f"From `benchmarks/quantized_vit_memory.json` (batch {data['batch']}, 1 + {data['steps']} training steps "
              "per variant; the file records no machine: the run of 2026-12-03 on the 2-core machine of the other "
              "results).")
    return "\n".join([source, "", *_table(columns, table)])


#: fsdp_memory.json's variant -> its label on the page
FSDP_LABELS = {
    "full-DDP": "full FT, DDP",
    "full-FSDP2": "full FT, FSDP2",
    "lora-DDP": "LoRA r=16, DDP",
    "lora-FSDP2": "LoRA r=16, FSDP2",
    "lora-FSDP2-keep": "LoRA r=16, FSDP2, `reshard_after_forward=False`",
}


def fsdp_memory() -> str:
    data = _load("results/fsdp_memory.json")
    columns = [("variant", "l"), ("params MiB", "r"), ("grads MiB", "r"), ("AdamW state MiB", "r"),
               ("DDP buckets MiB", "r"), ("tensor peak MiB", "r"), ("peak RSS MiB", "r"), ("s / step", "r")]
    rows = [[FSDP_LABELS.get(row["variant"], row["variant"]),
             *(f"{row[key] / MIB:.0f}" for key in ("parameter_bytes", "gradient_bytes", "optimizer_state_bytes",
                                                   "ddp_bucket_bytes", "tensor_peak_bytes", "rss_peak_bytes")),
             f"{row['step_s']:.2f}"] for row in data["rows"]]
    goals = [f"{FSDP_LABELS.get(ratio['variant'], ratio['variant'])} vs DDP: tensor peak "
             f"{ratio['tensor_peak_bytes']:.2f}x, step {ratio['step_s']:.2f}x (goal: {ratio['goal']['measure']} <= "
             f"{ratio['goal']['at_most']}x, {'met' if ratio['goal']['met'] else 'missed'})" for ratio in data["ratios"]]
    return "\n".join([_source("results/fsdp_memory.json", data["machine"]) + " Per rank, the larger of the two.", "",
                      *_table(columns, rows), "", *(f"- {goal}" for goal in goals)])


def preset_coverage() -> str:
    data = _load("results/preset_coverage.json")
    rows = []
    for group in data.values():
        covered, total = group["covered"], group["total"]
        share = "100" if covered == total else f"{covered / total * 100:.1f}"
        unbuildable = [case.rsplit(":", 1)[-1] for case, result in group["results"].items()
                       if result.startswith("NOT BUILDABLE")]
        failing = [case.rsplit(":", 1)[-1] for case, result in group["results"].items()
                   if not result.startswith(("ok", "NOT BUILDABLE"))]
        text = ", ".join(f"`{case}`" for case in failing) or "none"
        if unbuildable:
            buildable = total - len(unbuildable)
            built = covered / buildable * 100 if buildable else 0
            text += (f"; cannot be built here: {', '.join(f'`{case}`' for case in unbuildable)}; "
                     f"{built:.0f} % of the {buildable} that can")
        rows.append([group["title"], str(total), f"{covered} ({share} %)", text])
    environment = next(iter(data.values()))["environment"]
    minutes = sum(group["seconds"] for group in data.values()) / 60
    source = (f"From `benchmarks/results/preset_coverage.json` on {environment['cpus']} CPU cores; torch "
              f"{environment['torch'].split('+')[0]}, peft {environment['peft']}, transformers "
              f"{environment['transformers']}, timm {environment['timm']}; {minutes:.0f} min in all.")
    columns = [("library", "l"), ("cases", "r"), ("covered", "r"), ("not covered", "l")]
    return "\n".join([source, "", *_table(columns, rows)])


def compat_grid() -> str:
    lanes = sorted((_load(path.relative_to(BENCHMARKS).as_posix())
                    for path in (BENCHMARKS / "results").glob("compat_grid_peft*.json")),
                   key=lambda lane: Version(lane["peft"]), reverse=True)
    columns = [("peft", "l"), ("cells", "r"), ("refusals off: ok", "r"), ("clean error at injection", "r"),
               ("late crash", "r"), ("silently wrong", "r"), ("needs a GPU", "r"), ("plugin: ok", "r"),
               ("plugin: refused up front", "r"), ("plugin: PEFT's own error at injection", "r")]
    rows = []
    for lane in lanes:
        upstream = Counter(cell["refusals_off"].split(" (")[0] for cell in lane["cells"])
        plugin = Counter(cell["plugin"] for cell in lane["cells"])
        rows.append([lane["peft"], str(len(lane["cells"])), str(upstream["ok"]), str(upstream["error at injection"]),
                     str(upstream["late crash"]), str(upstream["silently wrong"]), str(upstream["needs a GPU"]),
                     str(plugin["ok"]), str(plugin["refused"]), str(plugin["error at injection"])])
    torch = {lane["torch"].split("+")[0] for lane in lanes}
    source = (f"From `benchmarks/results/compat_grid_peft*.json` (torch {', '.join(sorted(torch))}; one file per "
              "PEFT release).")
    return "\n".join([source, "", *_table(columns, rows)])


def _vision_methods_table(rows: list[dict], fp32_column: bool) -> list[str]:
    columns = [("variant", "l"), ("trainable params", "r"), ("accuracy % (mean ± std)", "r"),
               ("vs LoRA r=8, paired", "r"), *([("vs its fp32 run, paired", "r")] if fp32_column else []),
               ("s / epoch", "r"), ("peak MB", "r")]
    table = [[row["variant"], f"{row['trainable']:,}", _mean_std(row["accuracy_mean"], row["accuracy_std"]),
              _mean_std(row["paired_vs_lora_mean"], row["paired_vs_lora_std"], sign=True),
              *([_mean_std(row["paired_vs_fp32_mean"], row["paired_vs_fp32_std"], sign=True)
                 if "paired_vs_fp32_mean" in row else ""] if fp32_column else []),
              f"{row['seconds_per_epoch']:.1f}", f"{row['peak_mib']:.0f}"] for row in rows]
    return _table(columns, table)


def vision_methods(task: str) -> str:
    """One task's table of vision_methods.py (``vit``: fp32 and 4-bit rows; ``mobilenet``)."""
    data = _load("results/vision_methods.json")
    settings = data["settings"]
    if task == "vit":
        head = [_pretraining(data), f"{settings['epochs']} epochs, {settings['seeds']} paired seeds."]
        rows = _vision_methods_table(data["vit_rows"], fp32_column=True)
    else:
        head = [f"{settings['mobilenet_epochs']} epochs, {settings['seeds']} paired seeds."]
        rows = _vision_methods_table(data["mobilenet_rows"], fp32_column=False)
    return "\n".join([_source("results/vision_methods.json", data["machine"]), *head, "", *rows])


def vision_methods_timing() -> str:
    timing = _load("results/vision_methods.json")["ssf_merged_forward"]
    low, high = timing["merged_over_base_round_ratios_iqr"]
    seconds = timing["median_seconds"]
    return "\n".join([
        f"Forward of a batch of {timing['batch']} (the ViT task's backbone), median of {timing['repeats']} rounds "
        "that time the three models back to back:", "",
        *_table([("model", "l"), ("median ms", "r"), ("/ base model", "r")], [
            ["base model", f"{1000 * seconds['base']:.2f}", "1.000"],
            ["SSF merged (merge_and_unload)", f"{1000 * seconds['merged']:.2f}", f"{timing['merged_over_base']:.3f}"],
            ["SSF unmerged", f"{1000 * seconds['unmerged']:.2f}", f"{timing['unmerged_over_base']:.3f}"]]),
        "", f"Per-round ratio merged / base: interquartile range {low:.3f}-{high:.3f}. Merged and unmerged outputs "
        f"differ by at most {timing['merged_vs_unmerged_max_diff']:.1e}."])


def vision_methods_summary() -> str:
    """The guide's short table: SSF and AdaptFormer against LoRA r=8 on both tasks, and on the 4-bit ViT."""
    data = _load("results/vision_methods.json")
    vit = {row["variant"]: row for row in data["vit_rows"]}
    mobilenet = {row["variant"]: row for row in data["mobilenet_rows"]}
    lines = [f"Paired seeds ({data['settings']['seeds']}), mean ± std of the per-seed difference, in accuracy points "
             "([Vision methods](../results/vision_methods.md)):", "",
             *_table([("task", "l"), ("method", "l"), ("trainable params", "r"), ("vs LoRA r=8, paired", "r")], [
                 [task, method, f"{rows[method]['trainable']:,}",
                  _mean_std(rows[method]["paired_vs_lora_mean"], rows[method]["paired_vs_lora_std"], sign=True)]
                 for task, rows in (("ViT (digits 5-9)", vit), ("MobileNetV2 (MNIST-5k)", mobilenet))
                 for method in rows if method in ("SSF", "SSF lr 1e-2", "AdaptFormer", "AdaptFormer lr 1e-2")]),
             "", "On the 4-bit ViT, each against its own fp32 run: " + "; ".join(
                 f"{name} {_mean_std(vit[name]['paired_vs_fp32_mean'], vit[name]['paired_vs_fp32_std'], sign=True)}"
                 for name in vit if "paired_vs_fp32_mean" in vit[name]) + "."]
    return "\n".join(lines)


BLOCKS: dict[str, Callable[[], str]] = {
    "results:accuracy_mobilenet": accuracy_mobilenet,
    "results:accuracy_vit": accuracy_vit,
    "results:quantized_lora_variants": quantized_lora_variants,
    "results:fused_qkv": fused_qkv,
    "results:fused_qkv_swin": lambda: fused_qkv("results/fused_qkv_swin.json"),
    "results:adalora_vision:vit": lambda: _adalora_task("vit"),
    "results:adalora_vision:mobilenet": lambda: _adalora_task("mobilenet"),
    "results:detection": detection,
    "results:overhead": overhead,
    "results:cpu_paths": cpu_paths,
    "results:quantized_vit_memory": quantized_vit_memory,
    "results:fsdp_memory": fsdp_memory,
    "results:preset_coverage": preset_coverage,
    "results:compat_grid": compat_grid,
    "results:vision_methods:vit": lambda: vision_methods("vit"),
    "results:vision_methods:mobilenet": lambda: vision_methods("mobilenet"),
    "results:vision_methods:timing": vision_methods_timing,
    "results:vision_methods_summary": vision_methods_summary,
}

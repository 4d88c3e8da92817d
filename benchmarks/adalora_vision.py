"""AdaLoRA with the plugin's vision defaults vs AdaLoRA with PEFT's defaults vs LoRA, at an equal final budget (LoRA
r=8; AdaLoRA init_r 12 -> target_r 8), on two tasks, the same seeds for every variant (paired):

- ``vit``: the ViT transfer task of ``accuracy_vit.py`` (a 4-block ViT pretrained here on MNIST digits 0-4,
  transferred to digits 5-9; 500 test images: one image is 0.2 points);
- ``mobilenet``: ImageNet MobileNetV2 -> MNIST-5k of ``accuracy_mobilenet.py`` (the conv-heavy one; 1,000 test
  images: 0.1 points).

Variants: ``LoRA r=8`` (the tasks' own LoRA rows); ``AdaLoRA, PEFT defaults`` (``AdaLoraConfig(init_r=12,
target_r=8, total_step=N)``: PEFT's initialisation, scale lora_alpha/init_r = 8/12, tinit = tfinal = 0, deltaT = 1;
no orthogonal regulariser, which PEFT never adds on these models); ``AdaLoRA, vision defaults, orth 0`` and
``orth 0.5`` (``preset_config(model, "adalora", r=8, **derive_schedule(N))``: orthonormal factors, the vision
scale of ``peft_vision_ext.adalora.defaults``, the derived schedule; the orthogonal regulariser at weight 0 or 0.5,
applied as AdaLoraCallback applies it: the vision default is 0 on transformers, 0.5 on CNNs). Every run: AdamW at
3e-3, its own process; accuracy, trainable parameters at the start and after pruning, s/epoch, peak RSS.

    python benchmarks/adalora_vision.py [--seeds 5] [--tasks vit mobilenet] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

import torch

VARIANTS = ("LoRA r=8", "AdaLoRA, PEFT defaults", "AdaLoRA, vision defaults, orth 0",
            "AdaLoRA, vision defaults, orth 0.5")
TASKS = ("vit", "mobilenet")
LR, RANK = 3e-3, 8


def _config(task: str, variant: str, model: torch.nn.Module, steps: int) -> Any:
    import peft

    import peft_vision_ext as pve
    from peft_vision_ext.adalora import derive_schedule, use_adalora_init
    from peft_vision_ext.train import method_config

    if variant == "LoRA r=8":  # as accuracy_vit.py / accuracy_mobilenet.py train it
        if task == "vit":
            return pve.preset_config(model, "lora", fused="whole", r=RANK, lora_alpha=2 * RANK)
        return method_config(model, "lora", rank=RANK)
    if variant == "AdaLoRA, PEFT defaults":  # targets: the plugin's default preset, as for the other variants
        return use_adalora_init(peft.AdaLoraConfig(init_r=12, target_r=RANK, total_step=steps), "peft")
    weight = 0.5 if variant.endswith("orth 0.5") else 0.0  # the vision default: 0 on transformers, 0.5 on CNNs
    return pve.preset_config(model, "adalora", r=RANK, **derive_schedule(steps), orth_reg_weight=weight)


def _final_adapter_params(model: torch.nn.Module) -> int:
    """Adapter parameters of the ranks AdaLoRA kept (nonzero singular values), LoRA's all."""
    from peft.tuners.adalora.layer import AdaLoraLayer

    total = 0
    for module in model.modules():
        if isinstance(module, AdaLoraLayer) and "default" in module.lora_E:
            a, b = module.lora_A["default"], module.lora_B["default"]
            total += int((module.lora_E["default"] != 0).sum()) * (a.shape[1] + b.shape[0] + 1)
        elif hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            total += sum(p.numel() for p in module.lora_A["default"].parameters())
            total += sum(p.numel() for p in module.lora_B["default"].parameters())
    return total


def _task_data(task: str, checkpoint: str, seed: int, quick: bool) -> tuple[torch.nn.Module, tuple, int, int]:
    """(model, (x, y, x_test, y_test), batch, epochs) of ``task`` with its head initialised from ``seed``."""
    if task == "vit":
        from accuracy_vit import transfer_split, transferred_backbone

        data = transfer_split(0.25 if quick else 1.0)
        return transferred_backbone(checkpoint, seed), data, 64, 1 if quick else 3
    from peft_vision_ext.data import mnist_split, mobilenet_v2_imagenet, to_imagenet_tensor

    torch.manual_seed(seed)
    x, y, xt, yt = mnist_split(500 if quick else 3000, 200 if quick else 1000, seed=0)  # fixed split
    data = (to_imagenet_tensor(x, 64), torch.from_numpy(y).long(), to_imagenet_tensor(xt, 64),
            torch.from_numpy(yt).long())
    return mobilenet_v2_imagenet(num_classes=10), data, 50, 1 if quick else 2


def child(task: str, variant: str, seed: int, checkpoint: str, quick: bool) -> dict:
    import warnings

    import peft
    from _common import accuracy, peak_mib, reset_peak, train, trainable

    warnings.filterwarnings("ignore")
    model, (x, y, xt, yt), batch, epochs = _task_data(task, checkpoint, seed, quick)
    steps = epochs * ((len(x) + batch - 1) // batch)
    model = peft.get_peft_model(model, _config(task, variant, model, steps))
    params, total = trainable(model)
    head = params - _final_adapter_params(model) if variant == "LoRA r=8" else None
    adalora = model.base_model if variant.startswith("AdaLoRA") else None
    start_mib = reset_peak()
    timing = train(model, x, y, epochs=epochs, lr=LR, batch=batch, seed=seed, adalora=adalora,
                   regularize=variant != "AdaLoRA, PEFT defaults")  # weight 0: nothing added
    return {"task": task, "variant": variant, "seed": seed, "accuracy": accuracy(model, xt, yt), "trainable": params,
            "total": total, "final_adapter_params": _final_adapter_params(model), "head_params": head,
            "peak_mib": peak_mib(), "start_mib": start_mib, "steps_total": steps, **timing}


def summarize(runs: list[dict], task: str) -> list[dict]:
    from _common import mean_std

    mine = [r for r in runs if r["task"] == task]
    lora = {r["seed"]: r for r in mine if r["variant"] == "LoRA r=8"}
    rows = []
    for variant in VARIANTS:
        seeds = sorted((r for r in mine if r["variant"] == variant), key=lambda r: r["seed"])
        accuracy, spread = mean_std([100 * r["accuracy"] for r in seeds])
        paired = [100 * (r["accuracy"] - lora[r["seed"]]["accuracy"]) for r in seeds]
        difference, difference_std = mean_std(paired)
        peak = max(r["peak_mib"] for r in seeds)
        rows.append({"variant": variant, "accuracy_mean": accuracy, "accuracy_std": spread, "paired": paired,
                     "paired_difference_mean": difference, "paired_difference_std": difference_std,
                     "trainable": seeds[0]["trainable"], "trainable_share": seeds[0]["trainable"] / seeds[0]["total"],
                     "final_adapter_params": statistics.mean(r["final_adapter_params"] for r in seeds),
                     "seconds_per_epoch": statistics.mean(r["seconds_per_epoch"] for r in seeds), "peak_mib": peak,
                     "peak_ratio_vs_lora": peak / max(r["peak_mib"] for r in lora.values())})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| variant | trainable at start (share) | adapter params kept | accuracy % (mean ± std) | "
             "paired diff. vs LoRA | s / epoch | peak MB (vs LoRA) |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['trainable']:,} ({100 * r['trainable_share']:.2f} %) | "
              f"{r['final_adapter_params']:,.0f} | {r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f} | "
              f"{r['paired_difference_mean']:+.2f} ± {r['paired_difference_std']:.2f} | {r['seconds_per_epoch']:.1f} | "
              f"{r['peak_mib']:.0f} ({r['peak_ratio_vs_lora']:.2f}x) |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=TASKS)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 epoch, a fraction of the data")
    parser.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.pretrain_epochs = 1, 2
    if args.child:
        task, variant, seed, checkpoint = args.child
        print(json.dumps(child(task, variant, int(seed), checkpoint, args.quick)))
        return
    from _common import RESULTS, machine, run_child, save

    RESULTS.mkdir(exist_ok=True)
    checkpoint = RESULTS / "vit_digits_0_4_adalora.pt"
    pretraining = None
    if "vit" in args.tasks:
        from accuracy_vit import pretrain

        pretraining = pretrain(checkpoint, args.pretrain_epochs)
    runs = []
    for task in args.tasks:
        for seed in range(args.seeds):  # seed-major: the variants of a seed run back to back
            for variant in VARIANTS:
                runs.append(run_child(__file__, task, variant, str(seed), str(checkpoint),
                                      *(["--quick"] if args.quick else [])))
                print(f"{task} / {variant} / seed {seed}: accuracy {runs[-1]['accuracy']:.4f}", file=sys.stderr)
    checkpoint.unlink(missing_ok=True)
    results: dict[str, Any] = {"machine": machine(), "settings": {"seeds": args.seeds, "lr": LR, "quick": args.quick,
                                                                   "pretrain_epochs": args.pretrain_epochs},
                               "pretraining": pretraining, "tasks": {}, "runs": runs}
    for task in args.tasks:
        rows = summarize(runs, task)
        results["tasks"][task] = rows
        print(f"\n{task}: {args.seeds} seeds (paired), {runs[[r['task'] for r in runs].index(task)]['steps_total']} "
              "optimizer steps")
        print(table(rows))
    save("adalora_vision", results)


if __name__ == "__main__":
    main()

"""LoRA on a fused ``qkv`` layer: the whole layer (one rank-r update shared by q, k and v) vs the q and v slices (each
its own rank-r LoRA, the LoRA paper's W_q / W_v), at equal parameters (whole r=8 vs slices r=8: 32 x dim per block
either way) and at half (slices r=4); and the q, k and v slices at r=5 (30 x dim per block).

1. Accuracy on the transfer task of ``accuracy_vit.py`` (a backbone pretrained here on MNIST digits 0-4,
   transferred to digits 5-9; the same seeds for every variant), one process per variant and seed. ``--backbone``:
   ``vit`` (4-block ViT, results/fused_qkv.json) or ``swin`` (3-stage Swin with windowed attention,
   results/fused_qkv_swin.json); the fused-projection default of the presets follows both (a test reads them).
2. Step time of a timm ViT-S/16 (224 px, random init) forward + backward, the variants interleaved in one process,
   medians, reported as ratios to whole-qkv LoRA (``--repeats 0`` skips it).

    python benchmarks/fused_qkv.py [--backbone vit|swin] [--seeds 3] [--epochs 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from accuracy_vit import add_transfer_arguments

VARIANTS = {  # name -> (slices or "whole", rank)
    "whole qkv, r=8": ("whole", 8),
    "q/v slices, r=8": (("q", "v"), 8),
    "q/v slices, r=4": (("q", "v"), 4),
    "q/k/v slices, r=5": (("q", "k", "v"), 5),  # 30 x dim per block: 0.94x the parameters of the first two
}
LR = 3e-3  # accuracy_vit.py's LoRA learning rate


def config(model: torch.nn.Module, slices: tuple[str, ...] | str, rank: int):  # noqa: ANN201 - a peft.LoraConfig
    import peft_vision_ext as pve

    config = pve.preset_config(model, "lora", "attention", r=rank, lora_alpha=2 * rank)
    return pve.use_fused_slices(config, slices)


def child(name: str, seed: int, epochs: int, checkpoint: str, train_fraction: float, kind: str) -> dict:
    import warnings

    import peft
    from _common import accuracy, train, trainable
    from accuracy_vit import transfer_split, transferred_backbone

    warnings.filterwarnings("ignore")
    slices, rank = VARIANTS[name]
    x, y, xt, yt = transfer_split(train_fraction)
    model = transferred_backbone(checkpoint, seed, kind)
    model = peft.get_peft_model(model, config(model, slices, rank))
    params, total = trainable(model)
    timing = train(model, x, y, epochs=epochs, lr=LR, batch=64, seed=seed)
    return {"variant": name, "seed": seed, "accuracy": accuracy(model, xt, yt), "trainable": params, "total": total,
            "train_images": len(x), "test_images": len(xt), **timing}


def step_times(repeats: int, batch: int) -> dict[str, dict[str, float]]:
    """Forward + backward of a timm ViT-S/16 per variant, interleaved; median seconds and trainable parameters."""
    import peft
    import timm

    models = {}
    for name, (slices, rank) in VARIANTS.items():
        torch.manual_seed(0)
        base = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10)
        models[name] = peft.get_peft_model(base, config(base, slices, rank)).train()
    x = torch.randn(batch, 3, 224, 224)
    times: dict[str, list[float]] = {name: [] for name in models}
    for repeat in range(repeats + 1):  # the first round warms up
        for name, model in models.items():
            start = time.perf_counter()
            model(x).sum().backward()
            elapsed = time.perf_counter() - start
            model.zero_grad(set_to_none=True)
            if repeat:
                times[name].append(elapsed)
    return {name: {"median_s": statistics.median(values),
                   "adapter_params": sum(p.numel() for n, p in models[name].named_parameters()
                                         if p.requires_grad and "lora_" in n)}
            for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_transfer_arguments(parser, ", 2 timed steps at batch 2")
    parser.add_argument("--repeats", type=int, default=7, help="timed ViT-S steps per variant")
    parser.add_argument("--batch", type=int, default=8, help="ViT-S batch for the step times")
    parser.add_argument("--backbone", choices=["vit", "swin"], default="vit", help="the transfer task's backbone")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.pretrain_epochs, args.train_fraction = 1, 1, 2, 0.25
        args.repeats, args.batch = 2, 2
    if args.child:
        name, seed, checkpoint = args.child
        print(json.dumps(child(name, int(seed), args.epochs, checkpoint, args.train_fraction, args.backbone)))
        return
    from _common import RESULTS, machine, mean_std, run_child, save
    from accuracy_vit import pretrain

    RESULTS.mkdir(exist_ok=True)
    checkpoint = RESULTS / f"{args.backbone}_digits_0_4_fused.pt"
    pretraining = pretrain(checkpoint, args.pretrain_epochs, args.backbone)
    runs = []
    for seed in range(args.seeds):  # seed-major: the variants of a seed run back to back
        for name in VARIANTS:
            runs.append(run_child(__file__, name, str(seed), str(checkpoint), "--epochs", str(args.epochs),
                                  "--train-fraction", str(args.train_fraction), "--backbone", args.backbone))
            print(f"{name} seed {seed}: accuracy {runs[-1]['accuracy']:.4f}", file=sys.stderr)
    checkpoint.unlink()
    steps = step_times(args.repeats, args.batch) if args.repeats else {}
    whole = "whole qkv, r=8"
    rows = []
    for name in VARIANTS:
        mine = [r for r in runs if r["variant"] == name]
        accuracy, spread = mean_std([100 * r["accuracy"] for r in mine])
        paired = [100 * (r["accuracy"] - w["accuracy"]) for r, w in
                  zip(mine, [r for r in runs if r["variant"] == whole])]
        difference, difference_std = mean_std(paired)
        rows.append({"variant": name, "trainable": mine[0]["trainable"], "accuracy_mean": accuracy,
                     "accuracy_std": spread, "paired_difference_mean": difference,
                     "paired_difference_std": difference_std,
                     "seconds_per_epoch": statistics.mean(r["seconds_per_epoch"] for r in mine)})
        if steps:
            rows[-1].update({"vit_s_step_s": steps[name]["median_s"],
                             "vit_s_step_ratio": steps[name]["median_s"] / steps[whole]["median_s"],
                             "vit_s_adapter_params": steps[name]["adapter_params"]})
    described = {"vit": "ViT (4 blocks, dim 96)", "swin": "Swin (3 stages of 2 blocks, dim 48, window 4)"}
    held_out = pretraining["pretrain_accuracy_digits_0_4"]
    print(f"{described[args.backbone]} pretrained here on digits 0-4 ({held_out:.3f} "
          f"held-out) -> digits 5-9: {runs[0]['train_images']} train / {runs[0]['test_images']} test, {args.epochs} "
          f"epochs, {args.seeds} seeds (paired)"
          + (f"; ViT-S/16 steps: batch {args.batch}, median of {args.repeats}" if steps else ""))
    print("| variant | trainable params | accuracy % (mean ± std) | paired diff. vs whole qkv | s / epoch | "
          "ViT-S adapter params | ViT-S step (s) | vs whole qkv |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        step = (f"{row['vit_s_adapter_params']:,} | {row['vit_s_step_s']:.3f} | {row['vit_s_step_ratio']:.2f}x"
                if steps else "- | - | -")
        print(f"| {row['variant']} | {row['trainable']:,} | {row['accuracy_mean']:.2f} ± {row['accuracy_std']:.2f} | "
              f"{row['paired_difference_mean']:+.2f} ± {row['paired_difference_std']:.2f} | "
              f"{row['seconds_per_epoch']:.1f} | {step} |")
    settings = {k: getattr(args, k) for k in ("backbone", "seeds", "epochs", "pretrain_epochs", "train_fraction",
                                              "repeats", "batch", "quick")}
    name = "fused_qkv" if args.backbone == "vit" else f"fused_qkv_{args.backbone}"
    save(name, {"machine": machine(), "settings": settings, "pretraining": pretraining, "rows": rows, "runs": runs})


if __name__ == "__main__":
    main()

"""The plugin's own PEFT methods (SSF, AdaptFormer with bottleneck 8) against LoRA r=8 and full fine-tuning, paired
by seed, on two tasks, on fp32 and 4-bit bases; and the forward time of a merged SSF model against its base model.

- ViT task (accuracy_vit.py's): a small ViT PRETRAINED BY THAT SCRIPT'S RECIPE on MNIST digits 0-4, transferred to
  digits 5-9 (new 5-class head trained in full). LoRA r=8 alpha 16 on the whole fused qkv (the plugin's default
  preset), SSF with its default preset (a scale and shift after every Linear, Conv2d and norm layer of the backbone).
  AdaptFormer (bottleneck 8, scale 0.1) beside every MLP block. Learning rate 3e-3 for the adapters (the recipe of
  every benchmark here); SSF and AdaptFormer also at 1e-2 on the fp32 ViT (a vector per channel, or a branch scaled
  by 0.1, may want a larger one). Full fine-tuning at 1e-3 (accuracy_vit.py's).
- The same on the 4-bit (nf4) backbone (peft_vision_ext.quantize): each method against its own fp32 run, paired.
- MobileNetV2 task (accuracy_mobilenet.py's): ImageNet MobileNetV2 -> MNIST-5k, LoRA on the default conv preset, SSF
  and AdaptFormer (beside every inverted residual block) on their defaults.
- SSF merged: the deployed model's forward time against the base model's, measured interleaved in one process.

Each seed gives every variant the same new head and the same batches, so differences are paired. Each run is its own
process (clean peak memory).

    python benchmarks/vision_methods.py [--seeds 5] [--epochs 3] [--quick]
    python benchmarks/vision_methods.py --only AdaptFormer "4-bit AdaptFormer" "LoRA r=8"   # add variants to the
        # stored results (the same deterministic pretraining and seeds; LoRA re-run checks that they reproduce)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

VIT_VARIANTS = {  # name -> (method or None, bits or None, learning rate)
    "full fine-tuning": (None, None, 1e-3),
    "LoRA r=8": ("lora", None, 3e-3),
    "SSF": ("ssf", None, 3e-3),
    "SSF lr 1e-2": ("ssf", None, 1e-2),
    "4-bit LoRA r=8": ("lora", 4, 3e-3),
    "4-bit SSF": ("ssf", 4, 3e-3),
    "AdaptFormer": ("adaptformer", None, 3e-3),
    "AdaptFormer lr 1e-2": ("adaptformer", None, 1e-2),
    "4-bit AdaptFormer": ("adaptformer", 4, 3e-3),
}
#: each 4-bit variant's fp32 twin (the quantization-friendly claim is measured against it)
FP32_TWIN = {"4-bit LoRA r=8": "LoRA r=8", "4-bit SSF": "SSF", "4-bit AdaptFormer": "AdaptFormer"}
MOBILENET_VARIANTS = {  # name -> (method or None, learning rate)
    "full fine-tuning": (None, 1e-4),  # accuracy_mobilenet.py's (1e-3 diverged there)
    "LoRA r=8": ("lora", 3e-3),
    "SSF": ("ssf", 3e-3),
    "AdaptFormer": ("adaptformer", 3e-3),
}
REFERENCE = "LoRA r=8"


def _vit_config(model: torch.nn.Module, method: str) -> object:
    import peft_vision_ext as pve

    if method == "lora":
        return pve.preset_config(model, "lora", fused="whole", r=8, lora_alpha=16)
    return pve.preset_config(model, method)


def vit_child(name: str, seed: int, epochs: int, checkpoint: str, train_fraction: float) -> dict:
    import warnings

    import peft
    from _common import accuracy, peak_mib, reset_peak, train, trainable
    from accuracy_vit import transfer_split, transferred_backbone

    import peft_vision_ext as pve

    warnings.filterwarnings("ignore")
    method, bits, lr = VIT_VARIANTS[name]
    x, y, xt, yt = transfer_split(train_fraction)
    model = transferred_backbone(checkpoint, seed)
    config = _vit_config(model, method) if method else None
    if bits:
        pve.quantize(model, bits=bits)
    if config is None:
        model.requires_grad_(True)
    else:
        model = peft.get_peft_model(model, config)
    params, total = trainable(model)
    start_mib = reset_peak()
    timing = train(model, x, y, epochs=epochs, lr=lr, batch=64, seed=seed)
    return {"task": "vit", "variant": name, "seed": seed, "accuracy": accuracy(model, xt, yt), "trainable": params,
            "total": total, "peak_mib": peak_mib(), "start_mib": start_mib, "train_images": len(x),
            "test_images": len(xt), **timing}


def mobilenet_child(name: str, seed: int, epochs: int) -> dict:
    import warnings

    import peft
    from _common import accuracy, peak_mib, reset_peak, train, trainable

    from peft_vision_ext.data import mnist_split, mobilenet_v2_imagenet, to_imagenet_tensor
    from peft_vision_ext.train import method_config

    warnings.filterwarnings("ignore")
    method, lr = MOBILENET_VARIANTS[name]
    torch.manual_seed(seed)
    x, y, xt, yt = mnist_split(3000, 1000, seed=0)  # accuracy_mobilenet.py's fixed split; the seed drives training
    x, xt = to_imagenet_tensor(x, 64), to_imagenet_tensor(xt, 64)
    y, yt = torch.from_numpy(y).long(), torch.from_numpy(yt).long()
    model = mobilenet_v2_imagenet(num_classes=10)
    if method is None:
        model.requires_grad_(True)
    else:
        model = peft.get_peft_model(model, method_config(model, method, rank=8))
    params, total = trainable(model)
    start_mib = reset_peak()
    timing = train(model, x, y, epochs=epochs, lr=lr, batch=50, seed=seed)
    return {"task": "mobilenet", "variant": name, "seed": seed, "accuracy": accuracy(model, xt, yt),
            "trainable": params, "total": total, "peak_mib": peak_mib(), "start_mib": start_mib, **timing}


def merged_forward_time(repeats: int) -> dict:
    """Median forward time (batch 64) of the SSF-merged model / the base model, and of the unmerged SSF model, timed
    in rounds that run the three back to back, the order rotating every round (the first of a round is not always the
    same model). The ViT task's backbone architecture; the time does not depend on the weights' values."""
    import copy

    import peft
    from accuracy_vit import backbone

    import peft_vision_ext as pve

    torch.manual_seed(0)
    base = backbone(5).eval()
    adapted = peft.get_peft_model(copy.deepcopy(base), pve.preset_config(base, "ssf"))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "ssf_" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    adapted.eval()
    merged = copy.deepcopy(adapted).merge_and_unload().eval()
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    models = {"base": base, "merged": merged, "unmerged": adapted}
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    with torch.inference_mode():
        for model in models.values():
            model(x)  # warm-up
        for round_index in range(repeats):
            for offset in range(len(names)):
                name = names[(round_index + offset) % len(names)]
                started = time.perf_counter()
                models[name](x)
                times[name].append(time.perf_counter() - started)
        difference = (merged(x) - adapted(x)).abs().max().item()
    median = {name: statistics.median(values) for name, values in times.items()}
    # spread of the ratio: per-round ratios (each round times the three back to back)
    rounds = [m / b for m, b in zip(times["merged"], times["base"], strict=True)]
    return {"repeats": repeats, "batch": 64, "median_seconds": median,
            "merged_over_base": median["merged"] / median["base"],
            "merged_over_base_round_ratios_iqr": statistics.quantiles(rounds, n=4)[::2],
            "unmerged_over_base": median["unmerged"] / median["base"], "merged_vs_unmerged_max_diff": difference}


def paired(runs: list[dict], task: str, name: str, reference: str) -> tuple[float, float]:
    """Mean and std over seeds of (variant - reference) accuracy, in points."""
    from _common import mean_std

    base = {r["seed"]: r["accuracy"] for r in runs if r["task"] == task and r["variant"] == reference}
    return mean_std([100 * (r["accuracy"] - base[r["seed"]]) for r in runs
                     if r["task"] == task and r["variant"] == name])


def _rows(runs: list[dict], task: str, variants: list[str]) -> list[dict]:
    from _common import summarize

    rows = summarize([r for r in runs if r["task"] == task], variants)
    for row in rows:
        row["paired_vs_lora_mean"], row["paired_vs_lora_std"] = paired(runs, task, row["variant"], REFERENCE)
        twin = FP32_TWIN.get(row["variant"]) if task == "vit" else None
        if twin:
            row["paired_vs_fp32_mean"], row["paired_vs_fp32_std"] = paired(runs, task, row["variant"], twin)
    return rows


def _print(rows: list[dict], title: str) -> None:
    print(title)
    print("| variant | trainable | accuracy % (mean ± std) | vs LoRA r=8, paired | vs its fp32 run, paired | s / epoch "
          "| peak MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        fp32 = (f"{r['paired_vs_fp32_mean']:+.2f} ± {r['paired_vs_fp32_std']:.2f}" if "paired_vs_fp32_mean" in r
                else "")
        print(f"| {r['variant']} | {r['trainable']:,} | {r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f} | "
              f"{r['paired_vs_lora_mean']:+.2f} ± {r['paired_vs_lora_std']:.2f} | {fp32} | "
              f"{r['seconds_per_epoch']:.1f} | {r['peak_mib']:.0f} |")


def main() -> None:
    from accuracy_vit import add_transfer_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_transfer_arguments(parser, "; MobileNetV2: 1 epoch")
    parser.set_defaults(seeds=5)
    parser.add_argument("--mobilenet-epochs", type=int, default=2)
    parser.add_argument("--timing-repeats", type=int, default=30)
    parser.add_argument("--timing-only", action="store_true", help="measure the SSF merged forward time again and "
                        "store it in results/vision_methods.json")
    parser.add_argument("--only", nargs="+", default=None, help="run these variants (both tasks where they exist) "
                        "and merge them into the stored results/vision_methods.json; a re-run variant must reproduce")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.pretrain_epochs, args.train_fraction = 2, 1, 2, 0.25
        args.mobilenet_epochs, args.timing_repeats = 1, 5
    if args.child:
        task, name, seed = args.child[0].split(":", 1)[0], args.child[0].split(":", 1)[1], int(args.child[1])
        if task == "vit":
            print(json.dumps(vit_child(name, seed, args.epochs, args.child[2], args.train_fraction)))
        else:
            print(json.dumps(mobilenet_child(name, seed, args.mobilenet_epochs)))
        return
    from _common import RESULTS, machine, run_child, save
    from accuracy_vit import pretrain

    if args.timing_only:
        stored = json.loads((RESULTS / "vision_methods.json").read_text())
        stored["ssf_merged_forward"] = merged_forward_time(args.timing_repeats)
        stored["settings"]["timing_repeats"] = args.timing_repeats
        save("vision_methods", stored)
        print(f"SSF merged / base: {stored['ssf_merged_forward']['merged_over_base']:.3f}")
        return

    RESULTS.mkdir(exist_ok=True)
    checkpoint = RESULTS / "vit_digits_0_4_vision_methods.pt"
    pretraining = pretrain(checkpoint, args.pretrain_epochs)
    stored = json.loads((RESULTS / "vision_methods.json").read_text()) if args.only else None
    if stored is not None and stored["pretraining"]["pretrain_accuracy_digits_0_4"] != \
            pretraining["pretrain_accuracy_digits_0_4"]:
        raise SystemExit("the pretraining does not reproduce the stored run's: runs would not be paired")
    vit_names = [n for n in VIT_VARIANTS if args.only is None or n in args.only]
    mobilenet_names = [n for n in MOBILENET_VARIANTS if args.only is None or n in args.only]
    runs = []
    for seed in range(args.seeds):
        for name in vit_names:
            runs.append(run_child(__file__, f"vit:{name}", str(seed), str(checkpoint), "--epochs", str(args.epochs),
                                  "--train-fraction", str(args.train_fraction)))
            print(f"ViT {name} seed {seed}: accuracy {runs[-1]['accuracy']:.4f}", file=sys.stderr)
        for name in mobilenet_names:
            runs.append(run_child(__file__, f"mobilenet:{name}", str(seed), "-", "--mobilenet-epochs",
                                  str(args.mobilenet_epochs)))
            print(f"MobileNetV2 {name} seed {seed}: accuracy {runs[-1]['accuracy']:.4f}", file=sys.stderr)
    if stored is not None:  # a variant run again must give the stored accuracies (deterministic on this machine)
        old = {(r["task"], r["variant"], r["seed"]): r["accuracy"] for r in stored["runs"]}
        changed = [key for r in runs if (key := (r["task"], r["variant"], r["seed"])) in old
                   and old[key] != r["accuracy"]]
        if changed:
            raise SystemExit(f"re-run variants changed accuracy (not paired with the stored runs): {changed}")
        fresh = {(r["task"], r["variant"], r["seed"]) for r in runs}
        runs = [r for r in stored["runs"] if (r["task"], r["variant"], r["seed"]) not in fresh] + runs
        timing = stored["ssf_merged_forward"]
        args.seeds, args.epochs = stored["settings"]["seeds"], stored["settings"]["epochs"]
    else:
        timing = merged_forward_time(args.timing_repeats)
    checkpoint.unlink()
    present = {(r["task"], r["variant"]) for r in runs}
    vit_rows = _rows(runs, "vit", [n for n in VIT_VARIANTS if ("vit", n) in present])
    mobilenet_rows = _rows(runs, "mobilenet", [n for n in MOBILENET_VARIANTS if ("mobilenet", n) in present])
    _print(vit_rows, f"ViT (4 blocks, dim 96) pretrained here on digits 0-4 "
                     f"({pretraining['pretrain_accuracy_digits_0_4']:.3f} held-out) -> digits 5-9, {args.epochs} "
                     f"epochs, {args.seeds} paired seeds")
    _print(mobilenet_rows, f"ImageNet MobileNetV2 -> MNIST-5k (3,000 / 1,000), {args.mobilenet_epochs} epochs, "
                           f"{args.seeds} paired seeds")
    print(f"SSF merged, forward (batch 64) / base model: {timing['merged_over_base']:.3f} (median of "
          f"{timing['repeats']} interleaved rounds; unmerged SSF: {timing['unmerged_over_base']:.3f})")
    settings = {k: getattr(args, k) for k in ("seeds", "epochs", "pretrain_epochs", "train_fraction",
                                              "mobilenet_epochs", "timing_repeats", "quick")}
    save("vision_methods", {"machine": machine(), "settings": settings, "pretraining": pretraining,
                            "vit_rows": vit_rows, "mobilenet_rows": mobilenet_rows, "ssf_merged_forward": timing,
                            "runs": runs})


if __name__ == "__main__":
    main()

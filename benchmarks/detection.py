"""Detection transfer of every method on real digits: ImageNet MobileNetV2 FCOS -> MNIST-5k digits on canvases.

Data: ``peft_vision_ext.data.mnist_detection`` (real MNIST-5k digits, 1-3 per 128 px canvas at 24-56 px, exact ink
boxes, 10 classes; training canvases draw digits from 4,000 images, test canvases from the other 1,000). Model:
``peft_vision_ext.detection.fcos_mobilenet_v2`` (torchvision FCOS, ImageNet MobileNetV2 backbone, new FPN and
2-conv head at 64 channels). Variants, all with the same seeds (paired) and the same steps:

- heads only: the backbone frozen, FPN + head trained;
- full fine-tuning: everything (backbone at a tenth of the head's learning rate);
- LoRA, AdaLoRA, LoHa: the plugin's default preset (``backbone``: its groups == 1 convs), FPN + head in full.

Per run: COCO mAP@0.5 and mAP@[.5:.95] (torchmetrics, pycocotools backend) on the test canvases, trainable
parameters (backbone adapters and new parts counted apart), seconds per epoch, peak resident memory. Each run is
its own process (clean peak memory).

    python benchmarks/detection.py [--seeds 3] [--steps 500] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

VARIANTS = {  # name -> (PEFT method or None, rank, learning rate of adapters and new parts)
    "heads only": (None, 0, 2e-3),
    "full fine-tuning": (None, 0, 2e-3),
    "LoRA": ("lora", 8, 2e-3),
    "AdaLoRA": ("adalora", 8, 2e-3),
    "LoHa": ("loha", 4, 2e-3),
}
BACKBONE_LR_FACTOR = 0.1  # full fine-tuning: pretrained weights move at a tenth of the new parts' rate


def child(name: str, seed: int, args: argparse.Namespace) -> dict:
    import peft
    from _common import peak_mib, reset_peak

    import peft_vision_ext  # noqa: F401 - first: filters third-party notices, installs the hooks
    from peft_vision_ext.data import mnist_detection
    from peft_vision_ext.detection import detection_tensors, fcos_mobilenet_v2, mean_average_precision, train_detector
    from peft_vision_ext.train import method_config

    method, rank, lr = VARIANTS[name]
    x, targets = detection_tensors(*mnist_detection(args.train_size, split="train", seed=0))
    xt, targets_test = detection_tensors(*mnist_detection(args.test_size, split="test", seed=0))
    torch.manual_seed(seed)
    model = fcos_mobilenet_v2(10, init_seed=seed)  # the seed drives the new parts' init and the batch order
    new_parts = ("backbone.fpn", "head")
    backbone_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith("backbone.body"))
    optimizer = None
    if method is None:
        model.requires_grad_(False)
        for part in new_parts:
            model.get_submodule(part).requires_grad_(True)
        if name == "full fine-tuning":
            body = model.backbone.body
            body.requires_grad_(True)
            rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.body")]
            optimizer = torch.optim.AdamW([{"params": rest, "lr": lr},
                                           {"params": list(body.parameters()), "lr": lr * BACKBONE_LR_FACTOR}],
                                          weight_decay=1e-4)
    else:
        model = peft.get_peft_model(model, method_config(model, method, rank=rank, total_steps=args.steps))
        assert list(model.peft_config["default"].modules_to_save) == list(new_parts)
    trainable = {"adapters": 0, "new_parts": 0, "backbone": 0}
    for n, p in model.named_parameters():
        if p.requires_grad:
            part = ("new_parts" if any(f"{k}." in n for k in new_parts)
                    else "adapters" if method is not None else "backbone")
            trainable[part] += p.numel()
    start_mib = reset_peak()
    timing = train_detector(model, x, targets, steps=args.steps, batch_size=args.batch_size, lr=lr,
                            optimizer=optimizer, seed=seed, progress=False)
    metrics = mean_average_precision(model, xt, targets_test)
    epochs = args.steps * args.batch_size / len(x)
    return {"variant": name, "seed": seed, **metrics, "trainable": sum(trainable.values()),
            "trainable_parts": trainable, "backbone_params": backbone_params, "peak_mib": peak_mib(),
            "start_mib": start_mib, "seconds_per_epoch": timing["train_seconds"] / epochs,
            "final_loss": timing["final_loss"]}


def summarize(runs: list[dict], variants: list[str]) -> list[dict]:
    from _common import mean_std

    rows = []
    for name in variants:
        mine = sorted((r for r in runs if r["variant"] == name), key=lambda r: r["seed"])
        row = {"variant": name, "trainable": mine[0]["trainable"], "trainable_parts": mine[0]["trainable_parts"],
               "seconds_per_epoch": sum(r["seconds_per_epoch"] for r in mine) / len(mine),
               "peak_mib": max(r["peak_mib"] for r in mine), "seeds": len(mine)}
        for key in ("map_50", "map"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([100 * r[key] for r in mine])
        rows.append(row)
    full = {r["seed"]: r for r in runs if r["variant"] == "full fine-tuning"}
    for row in rows:  # paired differences to full fine-tuning (same seed: same init of the new parts, same batches)
        mine = [r for r in runs if r["variant"] == row["variant"] and r["seed"] in full]
        if mine:
            row["map_50_vs_full_mean"], row["map_50_vs_full_std"] = mean_std(
                [100 * (r["map_50"] - full[r["seed"]]["map_50"]) for r in mine])
            row["share_of_full"] = row["trainable"] / full[mine[0]["seed"]]["trainable"]
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| variant | trainable: adapters + new parts (+ backbone) | of full FT | mAP@0.5 % | vs full FT (paired) "
             "| mAP@[.5:.95] % | s / epoch | peak MB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        parts = r["trainable_parts"]
        split = f"{parts['adapters']:,} + {parts['new_parts']:,}" + (
            f" + {parts['backbone']:,}" if parts["backbone"] else "")
        lines.append(f"| {r['variant']} | {split} | {100 * r['share_of_full']:.0f} % | {r['map_50_mean']:.1f} ± "
                     f"{r['map_50_std']:.1f} | {r['map_50_vs_full_mean']:+.1f} ± {r['map_50_vs_full_std']:.1f} | "
                     f"{r['map_mean']:.1f} ± {r['map_std']:.1f} | {r['seconds_per_epoch']:.0f} | {r['peak_mib']:.0f} |")
    return "\n".join(lines)


def reusable_runs(settings: dict) -> list[dict]:
    """The runs of the saved results made with ``settings`` (seeds aside); none when the settings differ."""
    from _common import RESULTS

    path = RESULTS / "detection.json"
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    if {k: v for k, v in saved["settings"].items() if k != "seeds"} != settings:
        print(f"--reuse: {path} was made with other settings; running everything", file=sys.stderr)
        return []
    return saved["runs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps per run (2 epochs of 2,000 canvases)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=2000, help="training canvases")
    parser.add_argument("--test-size", type=int, default=500, help="test canvases")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 20 steps, 64 / 32 canvases")
    parser.add_argument("--reuse", action="store_true", help="keep the runs of results/detection.json made with the "
                        "same settings (more seeds later: --seeds 5 --reuse runs only seeds 3 and 4)")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps, args.train_size, args.test_size = 1, 20, 64, 32
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args)))
        return
    from _common import machine, run_child, save

    settings = {k: getattr(args, k) for k in ("steps", "batch_size", "train_size", "test_size", "quick")}
    runs = reusable_runs(settings) if args.reuse else []
    passed = ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--train-size", str(args.train_size),
              "--test-size", str(args.test_size)]
    for seed in range(args.seeds):  # seed-major: an interrupted run still has paired results
        for name in args.variants:
            if any(r["variant"] == name and r["seed"] == seed for r in runs):
                continue
            runs.append(run_child(__file__, name, str(seed), *passed))
            print(f"{name} seed {seed}: mAP@0.5 {100 * runs[-1]['map_50']:.1f}, mAP {100 * runs[-1]['map']:.1f}, "
                  f"{runs[-1]['seconds_per_epoch']:.0f} s/epoch", file=sys.stderr, flush=True)
    runs = [r for r in runs if r["seed"] < args.seeds and r["variant"] in args.variants]
    rows = summarize(runs, args.variants)
    print(f"FCOS on ImageNet MobileNetV2 -> MNIST-5k digit detection: {args.train_size} train / {args.test_size} test "
          f"canvases at 128 px, {args.steps} steps of batch {args.batch_size}, {args.seeds} seeds")
    print(table(rows))
    save("detection", {"machine": machine(), "settings": {**settings, "seeds": args.seeds}, "rows": rows, "runs": runs})


if __name__ == "__main__":
    main()

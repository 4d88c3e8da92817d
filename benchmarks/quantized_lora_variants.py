"""LoRA variants on a 4-bit ViT against fp32 LoRA, paired by seed: plain 4-bit LoRA, QPiSSA, QOLoRA and DoRA.

The task is accuracy_vit.py's: a small ViT PRETRAINED BY THAT SCRIPT'S RECIPE on MNIST digits 0-4, transferred to
digits 5-9 with LoRA r=8 on the whole fused qkv (the plugin's default preset with fused="whole", as accuracy_vit.py's
LoRA rows).
Each seed gives every variant the same new head and the same batches, so the difference to fp32 LoRA is paired.

- QPiSSA / QOLoRA: ``peft_vision_ext.get_quantized_peft_model``, PEFT's recipe for a quantized base. The init runs
  on the full-precision weights (PEFT refuses PiSSA on 4-bit layers; OLoRA on them re-quantizes a rewritten weight,
  which the compatibility matrix refuses), then the *residual* is quantized to 4-bit and the initial factors are loaded
  on top: the factors hold the principal part of each weight exactly, only the smaller residual carries the
  quantization error.
- LoftQ (the quantization-aware init) needs CUDA in PEFT: not run here.

    python benchmarks/quantized_lora_variants.py [--seeds 5] [--epochs 3] [--pretrain-epochs 10] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys

VARIANTS = {  # name -> (bits or None, extra LoraConfig options)
    "fp32 LoRA": (None, {}),
    "4-bit LoRA": (4, {}),
    "4-bit QPiSSA": (4, {"init_lora_weights": "pissa"}),
    "4-bit QOLoRA": (4, {"init_lora_weights": "olora"}),
    "4-bit DoRA": (4, {"use_dora": True}),
}
REFERENCE = "fp32 LoRA"
LR = 3e-3


def child(name: str, seed: int, epochs: int, checkpoint: str, train_fraction: float) -> dict:
    import warnings

    import peft
    from _common import accuracy, peak_mib, reset_peak, train, trainable
    from accuracy_vit import transfer_split, transferred_backbone

    import peft_vision_ext as pve

    warnings.filterwarnings("ignore")
    bits, options = VARIANTS[name]
    x, y, xt, yt = transfer_split(train_fraction)
    model = transferred_backbone(checkpoint, seed)
    config = pve.preset_config(model, "lora", fused="whole", r=8, lora_alpha=16, **options)
    reference = model.eval()(xt[:64]).detach()
    if bits and "init_lora_weights" in options:  # QPiSSA / QOLoRA: the init on fp32, then the residual quantized
        model = pve.get_quantized_peft_model(model, config, bits=bits)
    else:
        if bits:
            pve.quantize(model, bits=bits)
        model = peft.get_peft_model(model, config)
    # How far the adapted model starts from the pretrained one (0 for fp32; the quantization error otherwise)
    start_error = (model.eval()(xt[:64]).detach() - reference).abs().mean().item()
    params, total = trainable(model)
    start_mib = reset_peak()
    timing = train(model, x, y, epochs=epochs, lr=LR, batch=64, seed=seed)
    return {"variant": name, "seed": seed, "accuracy": accuracy(model, xt, yt), "trainable": params, "total": total,
            "start_logit_error": start_error, "peak_mib": peak_mib(), "start_mib": start_mib,
            "train_images": len(x), "test_images": len(xt), **timing}


def paired(runs: list[dict], name: str) -> tuple[float, float]:
    """Mean and std over seeds of (variant - fp32 LoRA) accuracy, in points."""
    from _common import mean_std

    reference = {r["seed"]: r["accuracy"] for r in runs if r["variant"] == REFERENCE}
    return mean_std([100 * (r["accuracy"] - reference[r["seed"]]) for r in runs if r["variant"] == name])


def main() -> None:
    from accuracy_vit import add_transfer_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_transfer_arguments(parser, "")
    parser.set_defaults(seeds=5)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.pretrain_epochs, args.train_fraction = 2, 1, 2, 0.25
    if args.child:
        name, seed, checkpoint = args.child
        print(json.dumps(child(name, int(seed), args.epochs, checkpoint, args.train_fraction)))
        return
    from _common import RESULTS, machine, run_child, save, summarize
    from accuracy_vit import pretrain

    RESULTS.mkdir(exist_ok=True)
    checkpoint = RESULTS / "vit_digits_0_4_variants.pt"
    pretraining = pretrain(checkpoint, args.pretrain_epochs)
    runs = []
    for seed in range(args.seeds):
        for name in VARIANTS:
            runs.append(run_child(__file__, name, str(seed), str(checkpoint), "--epochs", str(args.epochs),
                                  "--train-fraction", str(args.train_fraction)))
            print(f"{name} seed {seed}: accuracy {runs[-1]['accuracy']:.4f}", file=sys.stderr)
    checkpoint.unlink()
    rows = summarize(runs, list(VARIANTS))
    for row in rows:
        row["paired_vs_fp32_lora_mean"], row["paired_vs_fp32_lora_std"] = paired(runs, row["variant"])
        mine = [r["start_logit_error"] for r in runs if r["variant"] == row["variant"]]
        row["start_logit_error"] = sum(mine) / len(mine)
    print(f"ViT (4 blocks, dim 96) PRETRAINED HERE on MNIST digits 0-4 "
          f"({pretraining['pretrain_accuracy_digits_0_4']:.3f} held-out), transferred to digits 5-9: "
          f"{runs[0]['train_images']} train / {runs[0]['test_images']} test, {args.epochs} epochs, {args.seeds} "
          "paired seeds, LoRA r=8")
    print("| variant | accuracy % (mean ± std) | vs fp32 LoRA, paired (mean ± std) | logit error at start | "
          "s / epoch | peak MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f} | "
              f"{r['paired_vs_fp32_lora_mean']:+.2f} ± {r['paired_vs_fp32_lora_std']:.2f} | "
              f"{r['start_logit_error']:.4f} | {r['seconds_per_epoch']:.1f} | {r['peak_mib']:.0f} |")
    settings = {k: getattr(args, k) for k in ("seeds", "epochs", "pretrain_epochs", "train_fraction", "quick")}
    save("quantized_lora_variants", {"machine": machine(), "settings": settings, "pretraining": pretraining,
                                     "rows": rows, "runs": runs})


if __name__ == "__main__":
    main()

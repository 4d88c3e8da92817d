"""Transfer accuracy on a transformer backbone: a small ViT PRETRAINED BY THIS SCRIPT on MNIST digits 0-4, then
transferred to digits 5-9 (a new 5-class head) with a linear probe, full fine-tuning, LoRA, LoHa, LoKr, AdaLoRA and
LoRA on the 8-bit and 4-bit quantized backbone (bitsandbytes via peft_vision_ext.quantize).

No pretrained ViT can be downloaded here, so the backbone is trained from scratch on half of MNIST-5k (digits
0-4) first; the numbers say how well each method transfers a backbone that saw only those digits, not how they do
on an ImageNet ViT. Each variant and seed runs in its own process.

    python benchmarks/accuracy_vit.py [--seeds 3] [--epochs 3] [--pretrain-epochs 10] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

VARIANTS = {  # name -> (PEFT method or None, bits or None, learning rate)
    "linear probe": (None, None, 1e-2),
    "full fine-tuning": (None, None, 1e-3),
    "LoRA": ("lora", None, 3e-3),
    "LoHa": ("loha", None, 3e-3),
    "LoKr": ("lokr", None, 3e-3),
    "AdaLoRA": ("adalora", None, 3e-3),
    "8-bit LoRA": ("lora", 8, 3e-3),
    "4-bit LoRA": ("lora", 4, 3e-3),
}
IMAGE = 32
# Small backbones with fused q/k/v projections (timm ``attn.qkv``), trained from scratch on 32 px digits
BACKBONES = {
    "vit": dict(model_name="vit_tiny_patch16_224", patch_size=4, embed_dim=96, depth=4, num_heads=4),
    # a second architecture for fused_qkv.py: windowed attention, 3 stages (16x16 -> 8x8 -> 4x4 tokens)
    "swin": dict(model_name="swin_tiny_patch4_window7_224", patch_size=2, embed_dim=48, depths=(2, 2, 2),
                 num_heads=(3, 6, 12), window_size=4),
}


def backbone(num_classes: int, kind: str = "vit") -> torch.nn.Module:
    import timm

    return timm.create_model(pretrained=False, num_classes=num_classes, img_size=IMAGE, **BACKBONES[kind])


def digits(low: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from peft_vision_ext.data import mnist_5k, to_imagenet_tensor

    images, labels = mnist_5k()
    keep = labels < 5 if low else labels >= 5
    return to_imagenet_tensor(images[keep], IMAGE), torch.from_numpy(labels[keep] % 5).long()


def pretrain(path: Path, epochs: int, kind: str = "vit") -> dict:
    from _common import accuracy, train

    torch.manual_seed(0)
    x, y = digits(low=True)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    model = backbone(5, kind)
    cut = int(0.9 * len(x))
    timing = train(model, x[:cut], y[:cut], epochs=epochs, lr=1e-3, batch=64, seed=0)
    torch.save(model.state_dict(), path)
    return {"pretrain_accuracy_digits_0_4": accuracy(model, x[cut:], y[cut:]), **timing}


def transfer_split(train_fraction: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits 5-9: (train images, labels, test images, labels); a fixed split, the first ``train_fraction`` trained."""
    x, y = digits(low=False)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    cut = int(0.8 * len(x))
    train_index = order[:int(cut * train_fraction)]
    return x[train_index], y[train_index], x[order[cut:]], y[order[cut:]]


def transferred_backbone(checkpoint: str, seed: int, kind: str = "vit") -> torch.nn.Module:
    """The backbone pretrained on digits 0-4 with a new 5-class head for digits 5-9 (initialised from ``seed``)."""
    torch.manual_seed(seed)
    model = backbone(5, kind)
    state = {k: v for k, v in torch.load(checkpoint).items() if not k.startswith("head.")}
    model.load_state_dict(state, strict=False)
    return model


def add_transfer_arguments(parser: argparse.ArgumentParser, quick: str) -> None:
    """The options every script on this task shares (``--quick``: smoke-run settings, described by ``quick``)."""
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--train-fraction", type=float, default=1.0, help="share of the 5-9 training split used")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: 1 seed, 1 epoch on a quarter of the data, "
                        f"2 pretraining epochs{quick}")
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)


def child(name: str, seed: int, epochs: int, checkpoint: str, train_fraction: float) -> dict:
    import warnings

    import peft
    from _common import accuracy, peak_mib, reset_peak, train, trainable

    import peft_vision_ext as pve

    warnings.filterwarnings("ignore")
    method, bits, lr = VARIANTS[name]
    x, y, xt, yt = transfer_split(train_fraction)
    model = transferred_backbone(checkpoint, seed)
    if bits:
        pve.quantize(model, bits=bits)
    if method is None:
        model.requires_grad_(name == "full fine-tuning")
        model.head.requires_grad_(True)
    else:
        from peft_vision_ext.adalora import derive_schedule

        # AdaLoRA: the final budget of LoRA r=8 (init_r 12 -> target_r 8) with the plugin's vision defaults
        kwargs = {"lokr": {"r": 8, "alpha": 16}, "loha": {"r": 8, "alpha": 16},
                  "adalora": {"r": 8, **derive_schedule(epochs * ((len(x) + 63) // 64))}}.get(
            method, {"r": 8, "lora_alpha": 16})
        # LoRA rows: the whole fused qkv (the variant measured before the q/v-slices default); the two are compared
        # at equal parameters in fused_qkv.py
        fused = "whole" if method == "lora" else "slices"
        model = peft.get_peft_model(model, pve.preset_config(model, method, fused=fused, **kwargs))
    params, total = trainable(model)
    start_mib = reset_peak()
    timing = train(model, x, y, epochs=epochs, lr=lr, batch=64, seed=seed,
                   adalora=model.base_model if method == "adalora" else None)
    return {"variant": name, "seed": seed, "accuracy": accuracy(model, xt, yt), "trainable": params, "total": total,
            "peak_mib": peak_mib(), "start_mib": start_mib, "train_images": len(x), "test_images": len(xt), **timing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_transfer_arguments(parser, "")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.pretrain_epochs, args.train_fraction = 1, 1, 2, 0.25
    if args.child:
        name, seed, checkpoint = args.child
        print(json.dumps(child(name, int(seed), args.epochs, checkpoint, args.train_fraction)))
        return
    from _common import RESULTS, accuracy_table, machine, run_child, save, summarize

    RESULTS.mkdir(exist_ok=True)
    checkpoint = RESULTS / "vit_digits_0_4.pt"
    pretraining = pretrain(checkpoint, args.pretrain_epochs)
    print(f"pretrained here on digits 0-4: held-out accuracy {pretraining['pretrain_accuracy_digits_0_4']:.3f}",
          file=sys.stderr)
    runs = []
    for name in VARIANTS:
        for seed in range(args.seeds):
            runs.append(run_child(__file__, name, str(seed), str(checkpoint), "--epochs", str(args.epochs),
                                  "--train-fraction", str(args.train_fraction)))
            print(f"{name} seed {seed}: accuracy {runs[-1]['accuracy']:.4f}", file=sys.stderr)
    checkpoint.unlink()
    rows = summarize(runs, list(VARIANTS))
    held_out = pretraining["pretrain_accuracy_digits_0_4"]
    print(f"ViT (4 blocks, dim 96) PRETRAINED HERE on MNIST digits 0-4 ({held_out:.3f} held-out), transferred to "
          f"digits 5-9: {runs[0]['train_images']} train / {runs[0]['test_images']} test, {args.epochs} epochs, "
          f"{args.seeds} seeds")
    print(accuracy_table(rows, "LoRA", "fp32 LoRA"))
    settings = {k: getattr(args, k) for k in ("seeds", "epochs", "pretrain_epochs", "train_fraction", "quick")}
    save("accuracy_vit", {"machine": machine(), "settings": settings, "pretraining": pretraining, "rows": rows,
                          "runs": runs})


if __name__ == "__main__":
    main()

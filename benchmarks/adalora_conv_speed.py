"""AdaLoRA on convolutions: training-step time of ours vs upstream PEFT's SVDConv2d vs LoRA, side by side.

timm resnet50 (random init), 224 px, batch 8, every groups == 1 conv except the stem adapted (rank 8),
2 CPU threads by default. The three variants run interleaved (round-robin) in one process so machine noise
hits them alike; the script prints median step times and the ratios AdaLoRA-ours / LoRA and
AdaLoRA-upstream / LoRA, and checks ours equals upstream numerically on the same weights.

    python benchmarks/adalora_conv_speed.py [--steps 6] [--size 224] [--batch 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import peft
import torch
import torch.nn.functional as F
from peft.tuners.adalora.model import AdaLoraModel

import peft_vision_ext
from peft_vision_ext import peft_hooks
from peft_vision_ext.presets import resolve_targets
from peft_vision_ext.versions import peft_at_least


def _build(base, method, dispatch=None):
    targets = resolve_targets(base, "conv", method="lora")
    if method == "lora":
        config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=targets)
    else:
        config = peft.AdaLoraConfig(init_r=8, target_r=4, lora_alpha=16, total_step=1000, target_modules=targets)
    saved = AdaLoraModel.__dict__["_create_new_module"]
    if dispatch is not None:
        AdaLoraModel._create_new_module = dispatch
    try:
        model = peft.get_peft_model(copy.deepcopy(base), config)
    finally:
        AdaLoraModel._create_new_module = saved
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, optimizer


def _step(model, optimizer, x, y):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import timm

    torch.manual_seed(0)
    base = timm.create_model("resnet50", pretrained=False, num_classes=10)
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,))
    variants = {"lora": _build(base, "lora"), "adalora-ours": _build(base, "adalora")}
    if peft_at_least("0.20"):
        upstream = staticmethod(peft_hooks.ORIGINALS["adalora-conv2d"])
        variants["adalora-upstream"] = _build(base, "adalora", upstream)
        ours, theirs = variants["adalora-ours"][0], variants["adalora-upstream"][0]
        theirs.load_state_dict(ours.state_dict())  # same adapter weights (perturbed E below)
        with torch.no_grad():
            for model in (ours, theirs):
                for name, p in model.named_parameters():
                    if "lora_E" in name:
                        p.copy_(torch.linspace(-1, 1, p.numel()).view_as(p))
            ours.eval(), theirs.eval()
            difference = (ours(x[:2]) - theirs(x[:2])).abs().max().item()
            ours.train(), theirs.train()
    else:
        difference = None
    times: dict[str, list[float]] = {name: [] for name in variants}
    for model, optimizer in variants.values():  # warm-up
        _step(model, optimizer, x, y)
    for _ in range(args.steps):
        for name, (model, optimizer) in variants.items():
            started = time.perf_counter()
            _step(model, optimizer, x, y)
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"resnet50, {args.size}px, batch {args.batch}, {args.threads} threads, {args.steps} steps each "
          f"(torch {torch.__version__}, peft {peft.__version__}, peft-vision-ext {peft_vision_ext.__version__}, "
          f"{platform.processor() or platform.machine()})")
    for name, median in medians.items():
        print(f"  {name:<17} {median * 1000:8.0f} ms/step   {median / medians['lora']:.2f}x LoRA")
    if difference is not None:
        print(f"  max |ours - upstream| on the same adapter weights: {difference:.2e}")
    else:
        print("  upstream AdaLoRA has no Conv2d layer on this peft (< 0.20): ours only")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"median_seconds": medians, "ratios_to_lora": {k: v / medians["lora"] for k, v in
                                                                     medians.items()},
                       "max_abs_difference_ours_upstream": difference, "args": vars(args)}, handle, indent=2)


if __name__ == "__main__":
    main()

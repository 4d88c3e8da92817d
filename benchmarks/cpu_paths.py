"""Two CPU code paths this plugin chooses, measured side by side in one run (random init, no download):

1. 4-bit ViT-B/16 inference (224 px, eval, no grad): fp32 vs 4-bit in bitsandbytes' standard layout (the plugin's
   default) vs 4-bit repacked for bitsandbytes' AVX512-BF16 kernel (``enable_inference_packing``, only where the
   CPU has AVX512-BF16), images/s and the largest logit difference to fp32.
2. Routing on BEiT-B/16 (timm): forward+backward of LoRA on qkv where the attention computes F.linear with
   qkv.weight itself (q/v biases; the plugin routes the call through the adapter) vs the same network without q/v
   biases (the attention calls qkv; nothing to route), s/step: the cost of routing.

    python benchmarks/cpu_paths.py [--batch 8] [--repeats 5] [--parts inference,routing] [--quick]
"""

from __future__ import annotations  # noqa: I001 - peft_vision_ext comes first, on purpose

# First: it filters two harmless bitsandbytes notices before PEFT imports bitsandbytes.
import peft_vision_ext as pve

import argparse
import copy
import statistics
import time
import warnings

import peft
import timm
import torch
from _common import machine, save


def _median_seconds(step: object, repeats: int) -> float:
    step()  # warm-up (and, for the packed variant, the repack itself)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inference(batch: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    fp32 = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10).eval()
    x = torch.randn(batch, 3, 224, 224)
    variants = {"fp32": fp32, "4-bit, standard layout (default)": pve.quantize(copy.deepcopy(fp32), bits=4).eval()}
    packed = pve.quantize(copy.deepcopy(fp32), bits=4).eval()
    if pve.quantization.enable_inference_packing(packed):
        variants["4-bit, AVX512-BF16 packed"] = packed
    with torch.no_grad():
        reference = fp32(x)
    rows = []
    for name, model in variants.items():
        with torch.no_grad():
            seconds = _median_seconds(lambda model=model: model(x), repeats)
            difference = (model(x) - reference).abs().max().item()
        rows.append({"variant": name, "images_per_s": batch / seconds, "max_logit_diff_vs_fp32": difference})
    return rows


def routing(batch: int, repeats: int) -> list[dict]:
    from peft_vision_ext.routing import routed_paths

    rows = []
    # timm BEiT with q/v biases computes F.linear(x, qkv.weight, q/v bias) itself (routed); without them it calls
    # qkv like any ViT: the same network and adapters, so the difference is the cost of routing.
    for name, qkv_bias in (("LoRA on qkv, routed (q/v biases)", True), ("LoRA on qkv, called (no q/v biases)", False)):
        torch.manual_seed(0)
        base = timm.create_model("beit_base_patch16_224", pretrained=False, num_classes=10, qkv_bias=qkv_bias)
        model = peft.get_peft_model(base, peft.LoraConfig(r=16, target_modules=["qkv"], modules_to_save=["head"]))
        assert bool(routed_paths(model)) == qkv_bias
        x = torch.randn(batch, 3, 224, 224)
        model.train()

        def step(model: torch.nn.Module = model, x: torch.Tensor = x) -> None:
            model(x).pow(2).mean().backward()
            model.zero_grad(set_to_none=True)

        rows.append({"variant": name, "step_s": _median_seconds(step, repeats)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parts", default="inference,routing", help="comma-separated: inference, routing")
    parser.add_argument("--quick", action="store_true", help="batch 1, one timed repeat (a smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats = 1, 1
    parts = set(args.parts.split(","))
    warnings.filterwarnings("ignore")
    cpu = pve.quantization.cpu_takes_packed_path()
    print(f"AVX512-BF16 packed path on this CPU: {'yes' if cpu else 'no (packed variant not measured)'}")
    infer = inference(args.batch, args.repeats) if "inference" in parts else []
    fp32 = infer[0]["images_per_s"] if infer else 0.0
    print(f"| ViT-B/16 inference, batch {args.batch} | images/s | vs fp32 | max logit diff vs fp32 |")
    print("|---|---:|---:|---:|")
    for row in infer:
        print(f"| {row['variant']} | {row['images_per_s']:.1f} | {row['images_per_s'] / fp32:.2f}x | "
              f"{row['max_logit_diff_vs_fp32']:.4f} |")
    route = routing(args.batch, args.repeats) if "routing" in parts else []
    print(f"| BEiT-B/16 train step, batch {args.batch} | s/step | vs called |")
    print("|---|---:|---:|")
    for row in route:
        print(f"| {row['variant']} | {row['step_s']:.2f} | {row['step_s'] / route[-1]['step_s']:.2f}x |")
    save("cpu_paths", {"machine": machine(), "avx512bf16_packed_path": cpu, "inference": infer, "routing": route,
                       "settings": {"batch": args.batch, "repeats": args.repeats, "quick": args.quick}})


if __name__ == "__main__":
    main()

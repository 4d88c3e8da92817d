"""Weight bytes, training-step peak memory and step time of ViT-B/16 (224 px, batch 8): fp32 full fine-tuning,
fp32 LoRA, 8-bit LoRA and 4-bit LoRA (LoRA r=16 on qkv), each with and without gradient checkpointing.

Each variant runs in its own process; peak memory is the process's peak resident set (VmHWM) during the training
steps only (reset after the model is built and quantized, so the fp32 weights loaded before quantization do not
count; freed memory is handed back to the OS with malloc_trim first).
Step time: median of the timed steps after one warm-up step. Ratios are against fp32 LoRA without
checkpointing, all from one run. Random init (no download); prints a table, writes JSON next to this file.

    python benchmarks/quantized_vit_memory.py [--steps 3] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = [(name, checkpointing) for name in ("fp32 full FT", "fp32 LoRA", "8-bit LoRA", "4-bit LoRA")
            for checkpointing in (False, True)]


def run_variant(name: str, checkpointing: bool, steps: int, batch: int) -> dict:
    import warnings

    import peft
    import timm
    import torch
    from _common import peak_mib, reset_peak

    import peft_vision_ext as pve

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
    fp32_bytes = pve.storage_bytes(model)
    if name.startswith(("8-bit", "4-bit")):
        pve.quantize(model, bits=int(name[0]), gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.set_grad_checkpointing(True)
    if "LoRA" in name:
        model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=16, target_modules=["qkv"],
                                                           modules_to_save=["head"]))
    weight_bytes = pve.storage_bytes(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(0, 10, (batch,))
    model.train()
    start_mib = reset_peak()  # hands memory freed by quantization (the fp32 weights) back to the OS first
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - start)
    return {"variant": name, "checkpointing": checkpointing, "weight_bytes": weight_bytes,
            "fp32_weight_bytes": fp32_bytes, "peak_mib": peak_mib(), "start_mib": start_mib,
            "step_s": statistics.median(times), "trainable": sum(p.numel() for p in trainable)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--variant", type=int, default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.variant is not None:
        name, checkpointing = VARIANTS[args.variant]
        print(json.dumps(run_variant(name, checkpointing, args.steps, args.batch)))
        return
    rows = []
    for index in range(len(VARIANTS)):
        done = subprocess.run([sys.executable, __file__, "--variant", str(index), "--steps", str(args.steps),
                               "--batch", str(args.batch)], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"measured {rows[-1]['variant']} (checkpointing {rows[-1]['checkpointing']})", file=sys.stderr)
    base = next(r for r in rows if r["variant"] == "fp32 LoRA" and not r["checkpointing"])
    print(f"ViT-B/16, 224 px, batch {args.batch}, LoRA r=16 on qkv; {platform.processor() or platform.machine()}, "
          f"torch threads {__import__('torch').get_num_threads()}")
    print("| variant | grad. checkpointing | weight MB | weights vs fp32 | RSS before MB | peak MB | peak vs fp32 LoRA "
          "| s / step | time vs fp32 LoRA |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {'yes' if r['checkpointing'] else 'no'} | {r['weight_bytes'] / 1e6:.0f} | "
              f"{r['weight_bytes'] / r['fp32_weight_bytes']:.3f}x | {r['start_mib']:.0f} | {r['peak_mib']:.0f} | "
              f"{r['peak_mib'] / base['peak_mib']:.2f}x | {r['step_s']:.2f} | {r['step_s'] / base['step_s']:.2f}x |")
    # Smoke runs (other steps/batch, e.g. run_all.py --quick) never replace the recorded results.
    suffix = ".json" if (args.steps, args.batch) == (3, 8) else ".json.quick"
    Path(__file__).with_suffix(suffix).write_text(json.dumps({"rows": rows, "batch": args.batch}, indent=1))


if __name__ == "__main__":
    main()

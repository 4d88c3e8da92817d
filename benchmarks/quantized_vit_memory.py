"""Weight bytes, training-step peak memory and step time of ViT-B/16 (224 px, batch 8): fp32 full fine-tuning,
fp32 LoRA, 8-bit LoRA and 4-bit LoRA (LoRA r=16 on qkv), each with and without gradient checkpointing; 4-bit LoRA
also through bitsandbytes' own forward (the plugin's buffered 4-bit path switched off), side by side.

Three memory measures per variant, each variant in fresh processes:
- tensor peak: the most bytes torch tensors held at once during one training step, from the profiler's allocation
  events (``torch.profiler`` with ``profile_memory``: every allocation and free of the step, summed in time order)
  on top of the tensors alive before the step (weights with their quantization statistics, optimizer state, the
  batch, the plugin's dequantization buffer). It is what the model needs, whatever the allocator does.
- peak RSS, glibc defaults: the process's peak resident set (VmHWM) over the timed steps, as a user runs it.
  glibc raises its mmap threshold after the first large free, so later large temporaries come from the heap, whose
  freed holes stay resident.
- peak RSS, ``MALLOC_MMAP_THRESHOLD_=131072``: the same in a process started with a fixed mmap threshold (large
  buffers are mapped and unmapped at once).
RSS counters are reset after the model is built and quantized (memory freed by then is handed back first), so the
fp32 weights loaded before quantization do not count; RSS includes ~0.9 GB of libraries. Step time: median of the
timed steps after one warm-up step, per allocator setting. Ratios are against fp32 LoRA without checkpointing, all
from one run. Random init (no download); prints a table, writes JSON next to this file.

    python benchmarks/quantized_vit_memory.py [--steps 5] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS = [(name, checkpointing) for name in ("fp32 full FT", "fp32 LoRA", "8-bit LoRA", "4-bit LoRA",
                                               "4-bit LoRA, bitsandbytes forward")
            for checkpointing in (False, True)]
FIXED_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def tensor_peak_bytes(step: Any) -> int:
    """The highest sum of live bytes allocated by ``step()`` (profiler allocation events in time order)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            events.append((event.start_time_ns, event.extra_fields.alloc_size))
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


def _bytes(tensors: Any) -> int:
    seen, total = set(), 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def run_variant(name: str, checkpointing: bool, steps: int, batch: int, profile_step: bool) -> dict:
    import warnings

    import peft
    import timm
    import torch
    from _common import peak_mib, reset_peak

    import peft_vision_ext as pve
    from peft_vision_ext.quantization import buffered_4bit

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
    fp32_bytes = pve.storage_bytes(model)
    if name.startswith(("8-bit", "4-bit")):
        pve.quantize(model, bits=int(name[0]), gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.set_grad_checkpointing(True)
    buffered_4bit.set_buffered_dequantization("bitsandbytes forward" not in name)
    if "LoRA" in name:
        model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=16, target_modules=["qkv"],
                                                           modules_to_save=["head"]))
    weight_bytes = pve.storage_bytes(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(0, 10, (batch,))
    model.train()

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    start_mib = reset_peak()  # hands memory freed by quantization (the fp32 weights) back to the OS first
    times = []
    for index in range(steps + 1):
        start = time.perf_counter()
        step()
        if index:
            times.append(time.perf_counter() - start)
    row = {"variant": name, "checkpointing": checkpointing, "weight_bytes": weight_bytes,
           "fp32_weight_bytes": fp32_bytes, "peak_mib": peak_mib(), "start_mib": start_mib,
           "step_s": statistics.median(times), "trainable": sum(p.numel() for p in trainable)}
    if profile_step:  # after the RSS and time measurements: the profiler's own memory and time do not count
        before = (weight_bytes + _bytes(t for s in optimizer.state.values() for t in s.values()
                                        if isinstance(t, torch.Tensor)) + _bytes([x, y])
                  + buffered_4bit.buffer_bytes())
        row["tensor_peak_mib"] = (before + tensor_peak_bytes(step)) / 2**20
    return row


def _child(index: int, steps: int, batch: int, env: dict[str, str], profile_step: bool) -> dict:
    command = [sys.executable, __file__, "--variant", str(index), "--steps", str(steps), "--batch", str(batch)]
    done = subprocess.run(command + (["--profile"] if profile_step else []), capture_output=True, text=True,
                          env={**os.environ, **env})
    if done.returncode:
        raise RuntimeError(f"variant {VARIANTS[index]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--variant", type=int, default=None, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)  # child: tensor-level peak
    args = parser.parse_args()
    if args.variant is not None:
        name, checkpointing = VARIANTS[args.variant]
        print(json.dumps(run_variant(name, checkpointing, args.steps, args.batch, args.profile)))
        return
    rows = []
    for index in range(len(VARIANTS)):
        row = _child(index, args.steps, args.batch, {}, profile_step=True)
        fixed = _child(index, args.steps, args.batch, FIXED_THRESHOLD, profile_step=False)
        row.update(fixed_peak_mib=fixed["peak_mib"], fixed_start_mib=fixed["start_mib"], fixed_step_s=fixed["step_s"])
        rows.append(row)
        print(f"measured {row['variant']} (checkpointing {row['checkpointing']})", file=sys.stderr)
    print(table(rows, args.batch))
    # Smoke runs (other steps/batch, e.g. run_all.py --quick) never replace the recorded results.
    suffix = ".json" if (args.steps, args.batch) == (5, 8) else ".json.quick"
    Path(__file__).with_suffix(suffix).write_text(json.dumps({"rows": rows, "batch": args.batch,
                                                              "steps": args.steps}, indent=1))


def _find(rows: list[dict], variant: str, checkpointing: bool) -> dict:
    return next(r for r in rows if r["variant"] == variant and r["checkpointing"] == checkpointing)


def table(rows: list[dict], batch: int) -> str:
    import torch

    base = _find(rows, "fp32 LoRA", False)
    lines = [f"ViT-B/16, 224 px, batch {batch}, LoRA r=16 on qkv; {platform.processor() or platform.machine()}, "
             f"torch threads {torch.get_num_threads()}",
             "| variant | grad. ckpt | weight MB | weights vs fp32 | tensor peak MB | vs fp32 LoRA | RSS peak MB "
             "(glibc defaults) | vs fp32 LoRA | RSS peak MB (mmap threshold 128 KiB) | vs fp32 LoRA | s / step "
             "(defaults) | vs fp32 LoRA | s / step (threshold) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {'yes' if r['checkpointing'] else 'no'} | {r['weight_bytes'] / 1e6:.0f} | "
            f"{r['weight_bytes'] / r['fp32_weight_bytes']:.3f}x | {r['tensor_peak_mib']:.0f} | "
            f"{r['tensor_peak_mib'] / base['tensor_peak_mib']:.2f}x | {r['peak_mib']:.0f} | "
            f"{r['peak_mib'] / base['peak_mib']:.2f}x | {r['fixed_peak_mib']:.0f} | "
            f"{r['fixed_peak_mib'] / base['fixed_peak_mib']:.2f}x | {r['step_s']:.2f} | "
            f"{r['step_s'] / base['step_s']:.2f}x | {r['fixed_step_s']:.2f} |")
    ours, upstream = _find(rows, "4-bit LoRA", True), _find(rows, "4-bit LoRA, bitsandbytes forward", True)
    lora_ckpt = _find(rows, "fp32 LoRA", True)
    memory, speed = ours["peak_mib"] / base["peak_mib"], ours["step_s"] / lora_ckpt["step_s"]
    lines += ["", f"Goal (glibc defaults): 4-bit LoRA + checkpointing peak RSS {memory:.2f}x fp32 LoRA (goal <= 0.60x: "
              f"{'met' if memory <= 0.6 else 'missed'}); step time {speed:.2f}x fp32 LoRA + checkpointing (goal <= "
              f"1.15x: {'met' if speed <= 1.15 else 'missed'}). bitsandbytes' own forward: "
              f"{upstream['peak_mib'] / base['peak_mib']:.2f}x, {upstream['step_s'] / lora_ckpt['step_s']:.2f}x."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

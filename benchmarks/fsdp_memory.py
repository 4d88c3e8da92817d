"""Per-process memory and step time of training a timm ViT-B/16 with 2 CPU processes over gloo: DDP
(``DistributedDataParallel``) vs FSDP2 (``peft_vision_ext.distributed.shard_model``: ``fully_shard`` on every
transformer block, then on the root), for full fine-tuning and for LoRA (``peft.LoraConfig(r=16)`` with the plugin's
vision defaults: qkv targeted, the head in modules_to_save). Five variants (full-DDP, full-FSDP2, lora-DDP,
lora-FSDP2, and lora-FSDP2-keep: ``reshard_after_forward=False``, the blocks stay gathered from forward to backward),
each in its own ``torch.distributed.run`` launch of this file: fresh processes, one torch thread each
(OMP_NUM_THREADS=1), random init (no download), random inputs with a fixed seed per rank, AdamW, one warm-up step,
then the timed steps.

Measured on every rank (the tables show the larger of the two ranks; the JSON keeps both):
- tensor level: bytes of the parameters (a DTensor's local shard), of the gradients after backward, of the AdamW
  state, of DDP's gradient buckets (the sizes DDP reports), and the step's tensor peak: the tensors alive before the
  step (parameters, buffers, gradients, optimizer state, DDP buckets, the batch) plus the highest rise of live CPU
  tensor bytes during one training step, from the profiler's allocation events (``tensor_peak_bytes`` of
  quantized_vit_memory.py). Memory that is not a torch tensor (gloo's own buffers, the allocator's slack) is not seen.
  Cross-check in the JSON: the bytes of every tensor the garbage collector sees before the step.
- RSS: the process's peak resident set (``getrusage`` ru_maxrss: the whole life of the process, model construction
  included, and FSDP2 builds the whole model on every rank before sharding it) and the current RSS (/proc/self/statm)
  before and after the timed steps; about 0.9 GB of it are libraries.
- step time: mean seconds per step over the timed steps, a barrier before each.
The profiled step runs after the time and RSS measurements. FSDP2 is checked to have really sharded (every trainable
parameter a DTensor, each rank holding fewer of their elements than the whole, all ranks together exactly the whole;
a parameter with one row along dim 0, such as ``cls_token``, is held whole by one rank) and DDP not to have.
Goals, printed and not asserted: full fine-tuning, FSDP2 tensor peak <= 0.6x DDP's; LoRA, FSDP2 step time <= 1.2x
DDP's.

    python benchmarks/fsdp_memory.py [--steps 3] [--batch 4] [--image-size 224] [--checkpointing] [--output PATH]

Writes results/fsdp_memory.json (results/fsdp_memory_checkpointing.json with --checkpointing); other steps, batch,
image size or a subset of --variants make a smoke run, written to results/quick/ unless --output says where.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

VARIANTS = {"full-DDP": ("full", "ddp"), "full-FSDP2": ("full", "fsdp2"), "lora-DDP": ("lora", "ddp"),
            "lora-FSDP2": ("lora", "fsdp2"),
            # the blocks stay gathered from forward to backward: one all-gather of the frozen base per step, not two
            "lora-FSDP2-keep": ("lora", "fsdp2-keep")}
REGIMES = {"full": "full FT", "lora": "LoRA r=16"}
DEFAULTS = {"steps": 3, "batch": 4, "image_size": 224}
GOALS = {"full": ("tensor_peak_bytes", 0.6), "lora": ("step_s", 1.2)}  # regime -> (measure, FSDP2 / DDP at most)
WORLD = 2
SEED = 0
LR = 1e-4
LAUNCH_TIMEOUT_S = 3600
MIB = 2**20
MEMORY_KEYS = ["parameter_bytes", "buffer_bytes", "gradient_bytes", "optimizer_state_bytes", "ddp_bucket_bytes",
               "batch_bytes", "alive_before_bytes", "step_increase_bytes", "tensor_peak_bytes", "rss_peak_bytes",
               "rss_before_steps_bytes", "rss_after_bytes"]


# ---------------------------------------------------------------- worker: one process of a torch.distributed.run


def build(regime: str, image_size: int, checkpointing: bool) -> nn.Module:
    """ViT-B/16 with a 10-class head, the same random weights on every rank; LoRA r=16 for ``regime == "lora"``."""
    import peft
    import timm

    import peft_vision_ext  # noqa: F401 - fills LoraConfig's vision defaults (target modules, modules_to_save)

    torch.manual_seed(SEED)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10, img_size=image_size)
    if checkpointing:
        model.set_grad_checkpointing()  # before any wrapping
    if regime == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(r=16))
    return model.train()


def wrap(model: nn.Module, strategy: str) -> nn.Module:
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from peft_vision_ext.distributed import shard_model

    return shard_model(model, reshard_after_forward=strategy != "fsdp2-keep")


def storage_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a DTensor's local part); anything not a tensor is skipped."""
    from peft_vision_ext.distributed.shards import local_tensor

    seen: set[int] = set()
    total = 0
    for tensor in tensors:
        if not isinstance(tensor, torch.Tensor):
            continue
        storage = local_tensor(tensor).untyped_storage()
        if storage.nbytes() and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return storage_bytes(value for state in optimizer.state.values() for value in state.values())


def python_tensor_bytes() -> int:
    """Bytes of the distinct storages of every tensor the garbage collector sees: a cross-check of the accounting
    above (DDP's buckets are held in C++ and not seen)."""
    import gc

    gc.collect()
    return storage_bytes(obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def ddp_bucket_bytes(model: nn.Module) -> int:
    """The gradient buckets DDP keeps besides ``param.grad`` (gradient_as_bucket_view off), as DDP reports them."""
    if not isinstance(model, nn.parallel.DistributedDataParallel):
        return 0
    sizes = str(model._get_ddp_logging_data().get("bucket_sizes", ""))
    return sum(int(size) for size in sizes.split(",") if size.strip())


def sharding(model: nn.Module, strategy: str) -> dict[str, Any]:
    """How this rank holds the trainable parameters; ``ok``: FSDP2 sharded them, DDP did not."""
    from peft_vision_ext.distributed.shards import is_dtensor, local_tensor

    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    dtensors = [(name, p) for name, p in trainable if is_dtensor(p)]
    local = sum(local_tensor(p).numel() for _, p in trainable)
    whole = sum(p.numel() for _, p in trainable)
    held_whole = [name for name, p in dtensors if local_tensor(p).numel() >= p.numel()]
    splittable_held_whole = [name for name, p in dtensors if name in held_whole and p.shape[0] > 1]
    if strategy.startswith("fsdp2"):
        ok = bool(trainable) and len(dtensors) == len(trainable) and local < whole and not splittable_held_whole
    else:
        ok = isinstance(model, nn.parallel.DistributedDataParallel) and not dtensors and local == whole
    return {"trainable_tensors": len(trainable), "dtensors": len(dtensors), "local_elements": local,
            "global_elements": whole, "held_whole": held_whole, "ok": ok}


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                  y: torch.Tensor) -> Callable[..., float]:
    def step(after_backward: Callable[[], None] | None = None) -> float:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def timed_steps(step: Callable[[], float], steps: int) -> tuple[list[float], list[float]]:
    """Seconds and loss of each step, all ranks starting each step together."""
    import torch.distributed as dist

    seconds, losses = [], []
    for _ in range(steps):
        dist.barrier()
        start = time.perf_counter()
        losses.append(step())
        seconds.append(time.perf_counter() - start)
    return seconds, losses


def rss_now_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure(variant: str, args: argparse.Namespace, rank: int) -> dict[str, Any]:
    from quantized_vit_memory import tensor_peak_bytes

    regime, strategy = VARIANTS[variant]
    model = wrap(build(regime, args.image_size, args.checkpointing), strategy)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    generator = torch.Generator().manual_seed(SEED + 1 + rank)  # every rank its own batch
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=generator)
    y = torch.randint(0, 10, (args.batch,), generator=generator)
    step = training_step(model, optimizer, x, y)
    gradients: list[int] = []
    step(lambda: gradients.append(storage_bytes(p.grad for p in model.parameters())))  # warm-up
    rss_before = rss_now_bytes()
    seconds, losses = timed_steps(step, args.steps)
    record: dict[str, Any] = {
        "variant": variant, "rank": rank, "threads": torch.get_num_threads(),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "rss_peak_bytes": rss_peak_bytes(), "rss_before_steps_bytes": rss_before, "rss_after_bytes": rss_now_bytes(),
        "step_times_s": seconds, "step_s": sum(seconds) / len(seconds), "losses": losses,
        "sharding": sharding(model, strategy), "gradient_bytes": gradients[0]}
    alive = {"parameter_bytes": storage_bytes(model.parameters()), "buffer_bytes": storage_bytes(model.buffers()),
             "optimizer_state_bytes": optimizer_state_bytes(optimizer), "ddp_bucket_bytes": ddp_bucket_bytes(model),
             "batch_bytes": storage_bytes([x, y]),
             "gradients_before_step_bytes": storage_bytes(p.grad for p in model.parameters())}  # 0: set_to_none
    record.update(alive, alive_before_bytes=sum(alive.values()), python_tensor_bytes=python_tensor_bytes())
    record["step_increase_bytes"] = tensor_peak_bytes(step)  # last: the profiler's own cost counts nowhere
    record["tensor_peak_bytes"] = record["alive_before_bytes"] + record["step_increase_bytes"]
    return record


def worker(args: argparse.Namespace) -> None:
    import faulthandler
    import warnings

    import torch.distributed as dist

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    faulthandler.dump_traceback_later(LAUNCH_TIMEOUT_S - 60, exit=True)  # a collective that never completes
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    record = measure(args.worker, args, rank)
    args.rank_dir.mkdir(parents=True, exist_ok=True)
    (args.rank_dir / f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


# ---------------------------------------------------------------- parent: launches, table, results


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setting_args(args: argparse.Namespace) -> list[str]:
    flags = ["--steps", str(args.steps), "--batch", str(args.batch), "--image-size", str(args.image_size)]
    return flags + (["--checkpointing"] if args.checkpointing else [])


def launch(variant: str, args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    """One ``torch.distributed.run`` of ``variant`` on WORLD processes; every rank's record."""
    out = folder / variant
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), str(Path(__file__).resolve()), "--worker", variant,
               "--rank-dir", str(out), *setting_args(args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    if done.returncode:
        raise RuntimeError(f"{variant} failed:\n{done.stdout[-2000:]}\n{done.stderr[-6000:]}")
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(WORLD)]


def sharded_as_expected(variant: str, ranks: list[dict[str, Any]]) -> bool:
    shards = [r["sharding"] for r in ranks]
    ok = all(s["ok"] for s in shards)
    if VARIANTS[variant][1].startswith("fsdp2"):  # the ranks' parts make up the whole, each element held once
        ok = ok and sum(s["local_elements"] for s in shards) == shards[0]["global_elements"]
    return ok


def summarize(variant: str, ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """One row: the larger rank's value of every memory measure and of the mean step time."""
    regime, strategy = VARIANTS[variant]
    row: dict[str, Any] = {"variant": variant, "regime": regime, "strategy": strategy,
                           "trainable_parameters": ranks[0]["trainable_parameters"],
                           "sharded_as_expected": sharded_as_expected(variant, ranks)}
    row.update({key: max(r[key] for r in ranks) for key in MEMORY_KEYS})
    row["step_s"] = max(r["step_s"] for r in ranks)
    return row


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FSDP2 / DDP per regime (where both ran) for tensor peak, peak RSS and step time; the regime's goal checked."""
    by_name = {row["variant"]: row for row in rows}
    result = []
    for regime, suffix in [(regime, suffix) for regime in REGIMES for suffix in ("FSDP2", "FSDP2-keep")]:
        ddp, fsdp = by_name.get(f"{regime}-DDP"), by_name.get(f"{regime}-{suffix}")
        if ddp is None or fsdp is None:
            continue
        entry: dict[str, Any] = {"regime": regime, "variant": fsdp["variant"]}
        for key in ("tensor_peak_bytes", "rss_peak_bytes", "step_s"):
            entry[key] = fsdp[key] / ddp[key]
        measure, limit = GOALS[regime]
        entry["goal"] = {"measure": measure, "at_most": limit, "met": entry[measure] <= limit}
        result.append(entry)
    return result


def _mib(value: float) -> str:
    return f"{value / MIB:.0f}"


def table(rows: list[dict[str, Any]], ratio_rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"ViT-B/16 at {args.image_size} px, batch {args.batch} per process, {WORLD} processes (gloo, 1 thread "
             f"each), AdamW, {args.steps} timed step(s) after 1 warm-up, gradient checkpointing "
             f"{'on' if args.checkpointing else 'off'}; per rank, the larger of the ranks; MiB = 2^20 bytes",
             "| variant | trainable params | params MiB | grads MiB | AdamW state MiB | DDP buckets MiB | alive before "
             "step MiB | tensor peak MiB | peak RSS MiB | RSS after MiB | s / step | sharding as expected |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['variant']} | {r['trainable_parameters']:,} | {_mib(r['parameter_bytes'])} | "
              f"{_mib(r['gradient_bytes'])} | {_mib(r['optimizer_state_bytes'])} | {_mib(r['ddp_bucket_bytes'])} | "
              f"{_mib(r['alive_before_bytes'])} | {_mib(r['tensor_peak_bytes'])} | {_mib(r['rss_peak_bytes'])} | "
              f"{_mib(r['rss_after_bytes'])} | {r['step_s']:.3f} | {'yes' if r['sharded_as_expected'] else 'NO'} |"
              for r in rows]
    if ratio_rows:
        lines += ["", "| FSDP2 / DDP (variant) | tensor peak | peak RSS | s / step | goal |",
                  "|---|---:|---:|---:|---|"]
    for entry in ratio_rows:
        goal = entry["goal"]
        label = {"tensor_peak_bytes": "tensor peak", "step_s": "s / step"}[goal["measure"]]
        lines.append(f"| {REGIMES[entry['regime']]} ({entry['variant']}) | {entry['tensor_peak_bytes']:.2f}x | "
                     f"{entry['rss_peak_bytes']:.2f}x | {entry['step_s']:.2f}x | {label} <= {goal['at_most']:.2f}x: "
                     f"{'met' if goal['met'] else 'missed'} |")
    return "\n".join(lines)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    quick = any(getattr(args, key) != value for key, value in DEFAULTS.items()) or args.variants != list(VARIANTS)
    return {"steps": args.steps, "warmup_steps": 1, "batch_per_process": args.batch, "image_size": args.image_size,
            "checkpointing": args.checkpointing, "variants": args.variants, "world_size": WORLD,
            "backend": "gloo", "threads_per_process": 1, "optimizer": "AdamW", "lr": LR, "lora": "LoraConfig(r=16)",
            "model": "vit_base_patch16_224, num_classes=10, random init", "seed": SEED, "quick": quick,
            "tensor_peak": "alive before the step + peak rise of profiler allocation events during one step",
            "table_values": "max over ranks",
            "malloc_environment": {key: value for key, value in os.environ.items() if key.startswith("MALLOC_")}}


def write(payload: dict[str, Any], output: Path | None) -> Path:
    from _common import save

    if output is None:  # results/NAME.json, or results/quick/ for smoke settings
        return save("fsdp_memory_checkpointing" if payload["settings"]["checkpointing"] else "fsdp_memory", payload)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(payload, indent=1))
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="timed steps after 1 warm-up step")
    parser.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="images per process")
    parser.add_argument("--image-size", type=int, default=DEFAULTS["image_size"])
    parser.add_argument("--checkpointing", action="store_true", help="timm's set_grad_checkpointing() before wrapping")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--output", type=Path, default=None, help="results JSON (default: results/fsdp_memory.json)")
    parser.add_argument("--worker", choices=list(VARIANTS), default=None, help=argparse.SUPPRESS)  # one rank
    parser.add_argument("--rank-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.worker is not None:
        worker(args)
        return
    from _common import machine

    records: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="fsdp_memory_") as folder:
        for variant in args.variants:
            started = time.perf_counter()
            records[variant] = launch(variant, args, Path(folder))
            print(f"measured {variant} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    rows = [summarize(variant, ranks) for variant, ranks in records.items()]
    ratio_rows = ratios(rows)
    print(table(rows, ratio_rows, args))
    payload = {"machine": machine(), "settings": settings(args), "rows": rows, "ratios": ratio_rows, "ranks": records}
    print(f"written {write(payload, args.output)}")
    failed = [row["variant"] for row in rows if not row["sharded_as_expected"]]
    if failed:
        sys.exit(f"sharding not as expected (FSDP2 sharded, DDP whole) in: {', '.join(failed)}")


if __name__ == "__main__":
    main()

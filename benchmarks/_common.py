"""Shared pieces of the benchmark scripts: machine record, peak memory, the training loop, results on disk."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peft_vision_ext.adalora.step import adalora_step
from peft_vision_ext.train import evaluate as accuracy  # noqa: F401 - the scripts import it from here
from peft_vision_ext.train import freeze_norm_statistics

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import peft
    import timm
    import transformers

    try:
        import bitsandbytes

        bnb = bitsandbytes.__version__
    except ImportError:
        bnb = None
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "peft": peft.__version__,
            "transformers": transformers.__version__, "timm": timm.__version__, "bitsandbytes": bnb,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> float:
    """Hand freed memory back to the OS and restart the peak-RSS counter; returns the current RSS in MiB."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") / 1024


def peak_mib() -> float:
    return _status_kib("VmHWM") / 1024


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, batch: int, seed: int,
          adalora: Any = None, regularize: bool = True) -> dict[str, float]:
    """AdamW on the trainable parameters; BatchNorm statistics frozen; AdaLoRA: its orthogonal regulariser (the
    config's weight; ``regularize=False``: none, as plain PEFT on these models) before and the rank allocation after
    each step, as AdaLoraCallback does under Trainer."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    steps = (len(x) + batch - 1) // batch
    step = 0
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        freeze_norm_statistics(model)
        order = torch.randperm(len(x), generator=generator)
        for i in range(steps):
            index = order[i * batch:(i + 1) * batch]
            nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            with adalora_step(adalora, step, regularize):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
    return {"seconds_per_epoch": (time.perf_counter() - started) / epochs, "steps": step}


def trainable(model: nn.Module) -> tuple[int, int]:
    train_count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return train_count, sum(p.numel() for p in model.parameters())


def run_child(script: str, *args: str) -> dict[str, Any]:
    """Run ``script --child ...`` in a fresh process (clean peak memory) and return its last JSON line."""
    done = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(script).name} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def save(name: str, payload: dict[str, Any]) -> Path:
    """Write results/NAME.json; quick (smoke) runs go to results/quick/ and never replace real results."""
    folder = RESULTS / "quick" if payload.get("settings", {}).get("quick") else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1))
    return path


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5


def summarize(runs: list[dict[str, Any]], variants: list[str]) -> list[dict[str, Any]]:
    """One row per variant over its seeds: accuracy mean and std (%), parameters, time per epoch, peak memory."""
    rows = []
    for name in variants:
        mine = [r for r in runs if r["variant"] == name]
        mean, std = mean_std([100 * r["accuracy"] for r in mine])
        rows.append({"variant": name, "accuracy_mean": mean, "accuracy_std": std, "trainable": mine[0]["trainable"],
                     "trainable_share": mine[0]["trainable"] / mine[0]["total"],
                     "seconds_per_epoch": sum(r["seconds_per_epoch"] for r in mine) / len(mine),
                     "peak_mib": max(r["peak_mib"] for r in mine)})
    return rows


def accuracy_table(rows: list[dict[str, Any]], reference: str, label: str) -> str:
    base = next(r for r in rows if r["variant"] == reference)
    lines = [f"| variant | trainable params | share | accuracy % (mean ± std) | vs {label} | s / epoch | peak MB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['trainable']:,} | {100 * r['trainable_share']:.2f} % | "
              f"{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f} | {r['accuracy_mean'] - base['accuracy_mean']:+.2f} "
              f"| {r['seconds_per_epoch']:.1f} | {r['peak_mib']:.0f} |" for r in rows]
    return "\n".join(lines)

"""Every compatibility-matrix cell on tiny layers, with the plugin's refusals off ("upstream") and on.

Prints, per cell, where PEFT stops without the refusals (a late crash at train/save-load/merge, a silently wrong
result, or a clean error at injection) and what the plugin does; then the totals. Writes JSON next to this file.

    python benchmarks/compat_grid.py
"""

from __future__ import annotations

import json
import platform
import warnings
from collections import Counter
from pathlib import Path

import peft
import torch

import peft_vision_ext  # noqa: F401 - installs the hooks
from peft_vision_ext.compat import allow_unsupported
from peft_vision_ext.compat.matrix import KINDS, METHODS
from peft_vision_ext.compat.verify import run_cell

SILENT = ("identity", "changed", "differs", "does not change")


def outcome(run: object) -> str:
    if run.ok:
        return "ok"
    if "UnsupportedCombinationError" in run.error:
        return "refused"
    if run.failed_stage == "inject":
        return "error at injection"
    if any(word in run.error for word in SILENT):
        return f"silently wrong ({run.failed_stage})"
    return f"late crash ({run.failed_stage})"


def main() -> None:
    warnings.filterwarnings("ignore")
    rows = []
    for method in METHODS:
        for kind in KINDS:
            with allow_unsupported():
                upstream = outcome(run_cell(method, kind))
            ours = outcome(run_cell(method, kind))
            rows.append({"method": method, "kind": kind.value, "refusals_off": upstream, "plugin": ours})
            print(f"{method:<10} {kind.value:<15} refusals off: {upstream:<28} plugin: {ours}")
    for column in ("refusals_off", "plugin"):
        counts = Counter(row[column].split(" (")[0] for row in rows)
        print(f"{column:>13}: " + ", ".join(f"{name} {n}" for name, n in sorted(counts.items())))
    result = {"peft": peft.__version__, "torch": torch.__version__, "machine": platform.machine(), "cells": rows}
    Path(__file__).with_suffix(".json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

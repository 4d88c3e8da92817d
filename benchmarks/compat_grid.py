"""Every compatibility-matrix cell on tiny layers, with the plugin's refusals off ("upstream") and on.

All rows (the hand-written ten, the LoRA variants, every other PEFT method that wraps layers) on all layer kinds.
Prints, per cell, where PEFT stops without the refusals (a late crash at train/save-load/merge, a silently wrong
result, or a clean error at injection) and what the plugin does; then the totals. Writes
benchmarks/results/compat_grid_peft<version>.json.

    python benchmarks/compat_grid.py            # on the installed PEFT
    python benchmarks/compat_grid.py --write    # ... and store the measured cells as this PEFT's lane of
                                                # peft_vision_ext/matrix/grid.json (run once per CI lane)
"""

from __future__ import annotations

import argparse
import json
import platform
from collections import Counter
from pathlib import Path

import peft
import torch

import peft_vision_ext  # noqa: F401 - installs the hooks
from peft_vision_ext.compat import allow_unsupported, grid
from peft_vision_ext.compat.verify import NEEDS_GPU, run_cell
from peft_vision_ext.matrix.rows import GENERATED, installed
from peft_vision_ext.matrix.verdicts import KINDS, METHODS

SILENT = ("identity", "changed", "differs", "does not change")


def outcome(run: object) -> str:
    if run.ok:
        return "ok"
    if "UnsupportedCombinationError" in run.error:
        return "refused"
    if run.failed_stage == NEEDS_GPU:
        return "needs a GPU (unverified)"
    if run.failed_stage == "inject":
        return "error at injection"
    if any(word in run.error for word in SILENT):
        return f"silently wrong ({run.failed_stage})"
    return f"late crash ({run.failed_stage})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="store the measured cells in matrix/grid.json")
    args = parser.parse_args()
    measured = set(grid.cells())
    rows, stored = [], {}
    names = list(METHODS) + [row.name for row in GENERATED if installed(row)]
    with grid.quiet():
        for method in names:
            for kind in KINDS:
                with allow_unsupported():
                    upstream_run = run_cell(method, kind)
                ours = outcome(run_cell(method, kind))
                upstream = outcome(upstream_run)
                if (method, kind) in measured:
                    stored.setdefault(method, {})[kind.value] = grid.outcome(upstream_run)
                rows.append({"method": method, "kind": kind.value, "refusals_off": upstream, "plugin": ours})
                print(f"{method:<16} {kind.value:<17} refusals off: {upstream:<28} plugin: {ours}", flush=True)
    for column in ("refusals_off", "plugin"):
        counts = Counter(row[column].split(" (")[0] for row in rows)
        print(f"{column:>13}: " + ", ".join(f"{name} {n}" for name, n in sorted(counts.items())))
    changed = grid.differences(grid.load().get(peft.__version__, {}), stored)
    print(f"{len(changed)} measured cells differ from grid.json" + "".join(f"\n  {line}" for line in changed))
    if args.write:
        grid.write(peft.__version__, stored)
        print(f"wrote {grid.DATA} (lane peft {peft.__version__})")
    result = {"peft": peft.__version__, "torch": torch.__version__, "machine": platform.machine(), "cells": rows}
    out = Path(__file__).parent / "results" / f"compat_grid_peft{peft.__version__}.json"
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""The measured grid as data: ``grid.json`` holds, per PEFT release of the CI lanes, the outcome of every generated row
(:mod:`~peft_vision_ext.matrix.rows`) on every layer kind, run for real by
:func:`~peft_vision_ext.compat.verify.run_cell` with the plugin's refusals off (:mod:`peft_vision_ext.compat.grid`
measures; this module only reads and writes the results). The matrix turns them into verdicts (an outcome other
than ``ok`` is a refusal), and the test suite re-runs every cell on both lanes and compares. Read on first use,
never at import.

    python benchmarks/compat_grid.py --write    # on each CI lane: re-measure and store the installed PEFT's lane
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

from packaging.version import Version

DATA = Path(__file__).with_name("grid.json")
OK = "ok"
#: The stages a cell can stop at, as the matrix words them.
STAGES = {
    "inject": "PEFT raises when it injects the adapter",
    "identity": "the adapter changes the output at initialisation, before any training",
    "train": "training fails (a crash, no gradient, or an adapter that does not act)",
    "save-load": "a saved adapter does not reload to the same model",
    "merge": "merging crashes or gives a model that differs from the adapted one",
    "needs-gpu": "PEFT runs this initialisation on CUDA only: not verified without a GPU",
}
_NUMBER = re.compile(r" by [-+0-9.e]+( \(tolerance [-+0-9.e]+\))?")
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def outcome(run: object) -> str:
    """``ok``, or ``stage: the error on one line`` (shortened), with measured numbers and addresses removed, so
    that the text does not depend on the machine (the numbers are in the benchmark's output)."""
    if run.ok:
        return OK
    message = _ADDRESS.sub("", _NUMBER.sub("", " ".join(run.error.split())))
    return f"{run.failed_stage}: {message[:200]}"


def stage(result: str) -> str:
    """The stage part of an outcome (``ok`` for a passing cell): what the test compares across machines."""
    return result.split(":", 1)[0]


#: Set to 1 (before importing the plugin) to let results of ``peft-vision matrix --verify`` on this installation
#: decide the cells the shipped data does not cover. The shipped data always wins where it has a cell.
LOCAL_OPT_IN = "PEFT_VISION_EXT_LOCAL_GRID"


def local_path(peft_version: str) -> Path:
    """Where ``peft-vision matrix --verify`` stores what it measured on this installation."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "peft_vision_ext" / f"grid-peft{peft_version}.json"


@lru_cache(maxsize=1)
def load() -> dict[str, dict[str, dict[str, str]]]:
    """lane (PEFT version) -> row -> kind -> outcome: the shipped data, plus local results where opted in."""
    lanes = json.loads(DATA.read_text())["lanes"]
    if os.environ.get(LOCAL_OPT_IN) == "1":
        import peft

        path = local_path(peft.__version__)
        if path.exists():
            local = json.loads(path.read_text())["lanes"].get(peft.__version__, {})
            shipped = {row for results in lanes.values() for row in results}
            extra = {row: results for row, results in local.items() if row not in shipped}
            if extra:
                lanes = {**lanes, peft.__version__: {**lanes.get(peft.__version__, {}), **extra}}
    return lanes


def write(peft_version: str, results: dict[str, dict[str, str]]) -> None:
    # the shipped file itself: load() may hold this user's opted-in local results, which are not shipped data
    lanes = json.loads(DATA.read_text())["lanes"] if DATA.exists() else {}
    lanes[peft_version] = results
    ordered = {name: lanes[name] for name in sorted(lanes, key=Version)}
    DATA.write_text(json.dumps({"lanes": ordered}, indent=1, sort_keys=False) + "\n")
    load.cache_clear()


def differences(stored: dict[str, dict[str, str]], fresh: dict[str, dict[str, str]]) -> list[str]:
    """Cells whose stage differs between two runs (the error text may differ between machines; the stage may not)."""
    lines = []
    for row in sorted(set(stored) | set(fresh)):
        for kind in sorted(set(stored.get(row, {})) | set(fresh.get(row, {}))):
            old, new = stored.get(row, {}).get(kind, "missing"), fresh.get(row, {}).get(kind, "missing")
            if stage(old) != stage(new):
                lines.append(f"{row} x {kind}: stored {old!r}, now {new!r}")
    return lines

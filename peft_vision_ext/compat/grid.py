"""Measuring the grid (:mod:`peft_vision_ext.matrix.grid` holds the results): every generated row on every layer
kind, run for real by :func:`~peft_vision_ext.compat.verify.run_cell` with the plugin's refusals off.

    python benchmarks/compat_grid.py --write    # on each CI lane: re-measure and store the installed PEFT's lane
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import peft

from ..layers.kinds import LayerKind
from ..matrix import rows as method_rows
from ..matrix.grid import DATA, LOCAL_OPT_IN, OK, STAGES, differences, load, local_path, outcome, stage, write
from ..matrix.rows import CURATED, installed, unknown_methods
from ..matrix.verdicts import KINDS, curated, entry
from ..versions import peft_version
from .check import allow_unsupported
from .verify import run_cell

__all__ = ["DATA", "LOCAL_OPT_IN", "OK", "STAGES", "cells", "differences", "load", "local_path", "measure", "outcome",
           "quiet", "stage", "unverified_rows", "verify_locally", "write"]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Cells print nothing: third-party warnings, logs and progress bars are the grid's material, not output."""
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
        if previous is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous


def cells(rows: list[str] | None = None) -> list[tuple[str, LayerKind]]:
    """The measured cells of ``rows`` (default: every generated row the installed PEFT has, and the hand-written
    rows): all kinds, except those the hand-written entries cover."""
    names = rows if rows is not None else [*CURATED, *(row.name for row in method_rows.GENERATED if installed(row))]
    return [(name, kind) for name in names for kind in KINDS if not curated(name, kind)]


def measure(rows: list[str] | None = None) -> dict[str, dict[str, str]]:
    """row -> kind -> outcome on the installed PEFT, refusals off (what PEFT itself does)."""
    results: dict[str, dict[str, str]] = {}
    with quiet(), allow_unsupported():
        for name, kind in cells(rows):
            results.setdefault(name, {})[kind.value] = outcome(run_cell(name, kind))
    return results


def unverified_rows() -> list[str]:
    """Rows of the installed PEFT that the shipped data has no cells for at this version: known rows measured only
    on other releases, and methods this plugin does not know yet."""
    version = peft_version()
    rows = [row.name for row in method_rows.GENERATED if installed(row)] + [row.name for row in unknown_methods()]
    return [name for name in rows if all(entry(name, kind, version) is None for kind in KINDS)]


def verify_locally(rows: list[str] | None = None) -> tuple[Path, dict[str, dict[str, str]]]:
    """Measure ``rows`` (default: those the shipped data lacks on this installation) and store them in the user's
    cache."""
    results = measure(unverified_rows() if rows is None else rows)
    path = local_path(peft.__version__)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"lanes": {peft.__version__: results}}, indent=1) + "\n")
    return path, results

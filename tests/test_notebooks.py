"""Every notebook in notebooks/ executes top to bottom (offline, CPU) without an error output.

The notebooks train real models on real data, so they run on the newest-dependency lane only; the old lane
(``make test-old`` sets ``PVE_EXPECT_PEFT``) runs the unit tests.
"""

import os
import pathlib
import subprocess
import sys

import nbformat
import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = [
    "01_classification_presets",
    "02_segmentation_lora",
    "03_quantized_vit",
    "04_adalora_cnn_ranks",
]
# A hang guard, not a speed goal: machines are shared and differ, so no test asserts a wall-clock time.
CELL_TIMEOUT = 600

old_lane = pytest.mark.skipif(os.environ.get("PVE_EXPECT_PEFT") is not None,
                              reason="notebooks run on the newest lane (CI time); the old lane runs the unit tests")


def test_there_are_notebooks():
    assert NOTEBOOKS
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


def test_notebooks_are_stored_without_outputs():
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert not [cell for cell in code if cell.get("outputs") or cell.get("execution_count")], path.name


RUNNER = """
import sys, nbformat
from nbclient import NotebookClient
source, target, timeout, folder = sys.argv[1:]
notebook = nbformat.read(source, as_version=4)
try:
    NotebookClient(notebook, timeout=int(timeout), kernel_name="python3", resources={"metadata": {"path": folder}}
                   ).execute()
finally:
    nbformat.write(notebook, target)
"""


@old_lane
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    # In a process of its own: a kernel started under pytest's output capture breaks its ZMQ sockets during long
    # cells ("Socket operation on non-socket", then a cell timeout).
    executed = tmp_path / path.name
    result = subprocess.run([sys.executable, "-c", RUNNER, str(path), str(executed), str(CELL_TIMEOUT),
                             str(path.parent)], capture_output=True, text=True, timeout=3 * CELL_TIMEOUT)
    assert result.returncode == 0, result.stderr[-6000:]
    notebook = nbformat.read(executed, as_version=4)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
